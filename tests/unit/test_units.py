import pytest

from volpack.errors import UsageError
from volpack.units import human, parse_size


@pytest.mark.parametrize(
    "text,value",
    [
        ("4096", 4096),
        ("4K", 4096),
        ("4Ki", 4096),
        ("4KiB", 4096),
        ("4KB", 4000),
        ("1M", 1 << 20),
        ("1.5G", 3 << 29),
        ("2Gi", 2 << 30),
    ],
)
def test_sizes_accept_binary_and_decimal_suffixes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "4X", "-1", "0.3"])
def test_bad_sizes_are_usage_errors_naming_the_text(text):
    with pytest.raises(UsageError, match="size"):
        parse_size(text)


def test_human_sizes():
    assert human(1536) == "1.5 KiB" and human(10) == "10 B"


def test_public_api_functions_stay_callable_after_their_subpackages_are_imported():
    import volpack
    import volpack.targets.raw  # noqa: F401  (a subpackage import must not shadow the API)

    assert callable(volpack.restore) and callable(volpack.backup) and callable(volpack.verify)
    assert callable(volpack.open_archive) and callable(volpack.map_volume)
