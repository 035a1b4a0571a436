"""Session-wide JAX settings for the test suite.

Numerics, after equinox's `tests/conftest.py`: implicit dtype promotion (float32 meeting float64, ints meeting
floats) and implicit rank promotion (a [d] array broadcast against a [k, d] one without saying so) are how silent
precision loss and shape bugs enter numerical code, so every test runs with both turned into errors. The library's
code runs cleanly under them. The one known exception is third-party: optax's Adam computes its bias correction as
`decay ** count` with a Python float and an int32 count (optax `tree_utils/_tree_math.py::tree_bias_correction`),
which strict dtype promotion rejects; tests that run the Adam update (tests/test_train.py) relax dtype promotion to
"standard" locally and keep rank promotion raising.

Speed: the training tests compile the same jitted update several times (one `fit` per scenario, each building its
own jit), which dominates their run time on a small CPU. A persistent compilation cache in a fresh temporary
directory, private to this session, lets later identical programs load the executable instead of recompiling. JAX
still reports every such load as a compilation event, so recompilation checks see them; nothing persists across
sessions. It has to be configured here, before the first compilation of the session.

Compilation, not execution, is most of the suite's time: a `fit` of a 16-wide model on 500 users spent 7.9 of its
10 s in XLA's CPU backend. The suite therefore compiles at XLA's backend optimisation level 0 (LLVM's -O0: the same
HLO, the same operations in the same order, less machine-code optimisation; XLA's default is 3), which took that
`fit` to 6.5 s. On the idle 2-core machine, one run after the other, tests/test_parallel.py and tests/test_train.py
took 345 s at level 3 and 224 s at level 0; clean-clone CI runs of the whole suite took 1,118 s at level 3 and 859 s
at level 0. The flag goes into XLA_FLAGS before JAX creates its backend, so subprocesses that the tests start
inherit it; a level already in XLA_FLAGS is kept (`XLA_FLAGS=--xla_backend_optimization_level=3 pytest` runs the
suite as users' programs compile). Benchmarks outside the tests never run under it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

TEST_COMPILE_FLAGS = "--xla_backend_optimization_level=0"
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):  # a level set outside is kept
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_COMPILE_FLAGS}".strip()

import jax  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

_compilation_cache_dir = tempfile.mkdtemp(prefix="hvae_jax_tests_xla_cache_")
atexit.register(shutil.rmtree, _compilation_cache_dir, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _compilation_cache_dir)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


import pytest  # noqa: E402


@pytest.fixture
def standard_dtype_promotion():
    """Standard dtype promotion for one test: optax's Adam bias correction mixes a Python float with an int32
    count (see the module docstring). Use with `pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")`."""
    with jax.numpy_dtype_promotion("standard"):
        yield


@pytest.fixture
def strict_numerics():
    """Strict dtype promotion and rank promotion errors, for tests that switch them off elsewhere."""
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        yield
