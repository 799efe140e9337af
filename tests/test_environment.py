"""The test environment itself: fake devices and the compilation cache are in place."""

import jax


def test_eight_fake_cpu_devices():
  # tests/conftest.py forces 8 host devices so multi-device code paths always run.
  assert jax.device_count() == 8, jax.devices()


def test_persistent_compilation_cache_configured():
  assert jax.config.jax_compilation_cache_dir
