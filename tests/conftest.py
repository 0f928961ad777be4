import pytest

from sdlib.settings import data_root


@pytest.fixture(scope="session")
def shared_data():
    """The reference data folder, or a skip that says how to point at it."""
    root = data_root()
    if not (root / "math").is_dir():
        pytest.skip(
            f"reference data not found at {root}; set SDLIB_DATA_ROOT to the shared/data folder"
        )
    return root


@pytest.fixture(scope="session")
def bundled():
    """The bundled SmolLM2-135M-Instruct in fp32 (converted once into the cache)."""
    import torch

    from sdlib.models import load_policy

    torch.manual_seed(0)
    return load_policy("bundled:smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny():
    """A seeded two-layer random Llama with the bundled tokenizer."""
    from sdlib.models import load_policy

    return load_policy("tiny-random:2x64")
