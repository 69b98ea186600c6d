#!/usr/bin/env node
// A Node.js client of balances.v1.BalancesService, built from protos/ at run time
// with @grpc/grpc-js and @grpc/proto-loader (no generated code).
//
// Usage: node tests/support/node/balances_client.js TARGET API_KEY WALLET_ID CUSTOMER_ID [--include DIR]...
//
// --include adds a proto import directory (the googleapis-common-protos site-packages
// directory, for google/api/annotations.proto); protos/ is always included.
// Prints {"wallet": <GetWalletBalanceResponse>, "customer": <GetCustomerBalancesResponse>}
// on success. On a failed call prints {"error": {"method", "code", "codeName", "details"}}
// and exits 1; bad usage exits 2.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROJECT_ROOT = path.resolve(__dirname, '..', '..', '..');
const DEADLINE_MS = 15000;

function parseArgs(argv) {
  const positional = [];
  const includeDirs = [path.join(PROJECT_ROOT, 'protos')];
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '--include') {
      if (i + 1 >= argv.length) throw new Error('--include needs a directory');
      includeDirs.push(argv[i + 1]);
      i += 1;
    } else {
      positional.push(argv[i]);
    }
  }
  if (positional.length !== 4) throw new Error('expected TARGET API_KEY WALLET_ID CUSTOMER_ID');
  const [target, apiKey, walletId, customerId] = positional;
  return { target, apiKey, walletId, customerId, includeDirs };
}

function loadService(includeDirs) {
  const definition = protoLoader.loadSync('balances/v1/balances.proto', {
    includeDirs,
    keepCase: false, // lowerCamelCase, as in proto3 JSON
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).balances.v1.BalancesService;
}

function call(client, method, request, apiKey) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    const metadata = new grpc.Metadata();
    metadata.set('x-api-key', apiKey);
    client[method](request, metadata, { deadline }, (error, response) => {
      if (error) {
        error.method = method;
        reject(error);
      } else {
        resolve(response);
      }
    });
  });
}

async function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`usage error: ${error.message}\n`);
    return 2;
  }
  const BalancesService = loadService(args.includeDirs);
  const client = new BalancesService(args.target, grpc.credentials.createInsecure());
  try {
    const wallet = await call(client, 'GetWalletBalance', { walletId: args.walletId }, args.apiKey);
    const customer = await call(
      client,
      'GetCustomerBalances',
      { customerId: args.customerId },
      args.apiKey,
    );
    process.stdout.write(`${JSON.stringify({ wallet, customer })}\n`);
    return 0;
  } catch (error) {
    if (typeof error.code !== 'number') throw error;
    const codeName = Object.keys(grpc.status).find((name) => grpc.status[name] === error.code);
    const body = { method: error.method, code: error.code, codeName, details: error.details };
    process.stdout.write(`${JSON.stringify({ error: body })}\n`);
    process.stderr.write(`${error.method}: ${codeName} (${error.code}): ${error.details}\n`);
    return 1;
  } finally {
    client.close();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error) => {
    process.stderr.write(`${error.stack || error}\n`);
    process.exitCode = 3;
  },
);
