"""Find a model by name (`mlp`, `transformer`), import path (`pkg.module:factory`) or
file path (`path/to/module.py:factory`, loaded as a module of its own).

    load_model("my_pkg.my_module:make_model", spec)
    load_model("examples/user_model.py:make_model", spec)

A path that cannot be imported, or a factory that does not return something with
`init` and `per_sample_outputs`, is a UsageError naming the path: one line, exit 2.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

from harness.errors import UsageError
from harness.models.interface import Model, ModelSpec
from harness.models.names import is_import_path

BUILTIN_FACTORIES = {
    "mlp": "harness.models.mlp:make_model",
    "transformer": "harness.models.transformer:make_model",
}


def _factory(name: str) -> Callable[[ModelSpec], Model]:
    path = BUILTIN_FACTORIES.get(name, name)
    if not is_import_path(path):
        raise UsageError(f"--model {name!r}: not a built-in model ({', '.join(BUILTIN_FACTORIES)}) "
                         f"nor an import path like my_pkg.my_module:make_model")
    module_name, _, attr = path.rpartition(":")
    try:
        module = _load_file(module_name) if module_name.endswith(".py") else importlib.import_module(module_name)
    except Exception as err:  # any import-time failure of user code is bad input
        raise UsageError(f"--model {name}: cannot import {module_name} ({type(err).__name__}: {err})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"--model {name}: {module_name} has no callable {attr!r}")
    return factory


def _load_file(path: str) -> ModuleType:
    """A model file as a module named after its path (so two files never collide)."""
    file = Path(path).resolve()
    if not file.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    name = "harness_user_model_" + "_".join(file.with_suffix("").parts[1:]).replace("-", "_").replace(".", "_")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_model(name: str, spec: ModelSpec) -> Model:
    """The model `name` builds from `spec`, checked against the interface."""
    factory = _factory(name)
    try:
        model = factory(spec)
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(f"--model {name}: the factory failed ({type(err).__name__}: {err})") from None
    if not isinstance(model, Model):
        raise UsageError(f"--model {name}: the factory returned {type(model).__name__}, which lacks "
                         f"init(key) and per_sample_outputs(params, batch, dropout_key)")
    return model
