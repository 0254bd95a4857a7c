"""Plug-in discovery: the registries (methods, model families, dataset sources, campaign
schemes) find their plug-ins by importing every module of their package once; each module
registers itself (in its registry's own table, or here with ``register``)."""

import functools
import importlib
import pkgutil


@functools.lru_cache(maxsize=None)
def import_all(package_name):
  """Imports every module of package ``package_name`` (once per process)."""
  package = importlib.import_module(package_name)
  for module in pkgutil.iter_modules(package.__path__):
    importlib.import_module(f"{package_name}.{module.name}")


_REGISTRIES = {}  # kind -> {name: plug-in}


def register(kind, name, plugin):
  """Makes ``plugin`` findable as ``kind`` ``name`` (two plug-ins of one name are an error)."""
  known = _REGISTRIES.setdefault(kind, {})
  if name in known and known[name] is not plugin:
    raise ValueError(f"two {kind}s are named {name!r}: {known[name]} and {plugin}")
  known[name] = plugin
  return plugin


def registered(kind, package_name):
  """{name: plug-in} of ``kind``, in name order, after importing ``package_name``'s modules.

  A layer may find plug-ins of a layer above it this way (config.py finds the campaign
  schemes' config sections): the plug-ins import the layer below, never the reverse."""
  import_all(package_name)
  return dict(sorted(_REGISTRIES.get(kind, {}).items()))
