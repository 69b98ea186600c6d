"""Storage adapters, one package per backend (``sqlite``, ``postgres``); ``stores`` picks one
from the settings (``open_stores``) and gives the backend-neutral ``Stores``."""
