"""Find a model by name (`mlp`, `transformer`) or import path (`pkg.module:factory`).

    load_model("examples.user_model:make_model", spec)

A path that cannot be imported, or a factory that does not return something with
`init` and `per_sample_outputs`, is a UsageError naming the path: one line, exit 2.
"""

from __future__ import annotations

import importlib
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
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any import-time failure of user code is bad input
        raise UsageError(f"--model {name}: cannot import {module_name} ({type(err).__name__}: {err})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"--model {name}: {module_name} has no callable {attr!r}")
    return factory


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
