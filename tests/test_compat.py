"""Old import paths and names keep working after the move into layer packages (with a
DeprecationWarning naming the new home), and names that are gone say what replaced them."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

import hirune
from hirune.compat import MOVED


def fresh(name: str):
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]
    return importlib.import_module(name)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_old_module_imports_with_a_warning_naming_the_new_one(old):
    with pytest.warns(DeprecationWarning, match=MOVED[old][0].replace(".", r"\.")):
        module = fresh(old)
    for name, target in MOVED[old][1].items():  # every renamed name resolves
        assert getattr(module, name) is not None, name


def test_the_names_users_used_resolve_to_the_new_objects():
    from hirune.training import TrainConfig, Trainer, load, train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from hirune.samplers import SamplerRun, ddim
        from hirune.trainer import Run, TrainConfig as OldConfig, load_run, train as old_train

        from hirune.sampling import SamplerCall
        from hirune.sampling import ddim as new_ddim
    assert (OldConfig, old_train, load_run, Run) == (TrainConfig, train, load, Trainer)
    assert SamplerRun is SamplerCall and ddim is new_ddim


def test_every_name_of_hirune_all_resolves():
    for name in hirune.__all__:
        assert getattr(hirune, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute"):
        hirune.nothing_here


def test_gone_names_say_what_replaced_them():
    with pytest.raises(ImportError, match=r"load\(run\)\.evaluate"):
        from hirune.evaluation import evaluate_run  # noqa: F401
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = fresh("hirune.generate")
    with pytest.raises(AttributeError, match="now hirune.inference.generate"):
        old.no_such_name


def test_hirune_generate_is_still_the_function_after_the_old_module_is_imported():
    """`import hirune.generate` (the old module) sets the package's attribute to the alias module;
    `hirune.generate(...)` must still sample, as the function it names."""
    import importlib
    import warnings

    import hirune

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        importlib.import_module("hirune.generate")
    assert callable(hirune.generate)
    with pytest.raises(ValueError, match="the number of samples must be >= 1"):
        hirune.generate("no-such-run", 0)             # the function's own check: it was called
