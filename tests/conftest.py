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
"""

from __future__ import annotations

import atexit
import shutil
import tempfile

import jax

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
