import pytest

from sdlib.settings import data_root


@pytest.fixture(scope="session")
def shared_data():
    """The reference data folder, or a skip that says how to point at it."""
    root = data_root()
    if not (root / "math").is_dir():
        pytest.skip(f"reference data not found at {root}; set SDLIB_DATA_ROOT to the shared/data folder")
    return root
