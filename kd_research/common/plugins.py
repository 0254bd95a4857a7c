"""Plug-in discovery: the registries (methods, model families, dataset sources) find their
plug-ins by importing every module of their package once; each module registers itself."""

import functools
import importlib
import pkgutil


@functools.lru_cache(maxsize=None)
def import_all(package_name):
  """Imports every module of package ``package_name`` (once per process)."""
  package = importlib.import_module(package_name)
  for module in pkgutil.iter_modules(package.__path__):
    importlib.import_module(f"{package_name}.{module.name}")
