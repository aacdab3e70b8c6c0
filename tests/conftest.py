"""Suite-wide fixtures."""
import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop JAX's compiled executables after each test module. XLA:CPU maps each executable's code into a few
    memory regions, and one pytest process that keeps every executable of the suite passes Linux's default
    vm.max_map_count (65530) and dies inside the compiler (seen: SIGSEGV / SIGABRT at ~93% of `make test`)."""
    yield
    jax.clear_caches()
