import pytest

from volpack.errors import UsageError
from volpack.units import check_mode, human, human_duration, parse_duration, parse_mode, parse_size


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
    import volpack.pipeline.backup  # noqa: F401  (the verb modules share the functions' names)
    import volpack.pipeline.restore  # noqa: F401
    import volpack.pipeline.verify  # noqa: F401
    import volpack.targets.raw  # noqa: F401  (a subpackage import must not shadow the API)

    assert callable(volpack.restore) and callable(volpack.backup) and callable(volpack.verify)
    assert callable(volpack.open_archive) and callable(volpack.map_volume)


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("0", 0),
        ("0s", 0),
        ("30s", 30),
        ("90m", 5400),
        ("24h", 86400),
        ("1.5d", 129600),
        ("2w", 1209600),
    ],
)
def test_durations_need_a_unit_except_zero(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "24", "1y", "-5m", "h", "1 day", "5mi"])
def test_bad_durations_are_usage_errors_naming_the_text(text):
    with pytest.raises(UsageError, match=f"--older-than '{text}'"):
        parse_duration(text, "--older-than")


def test_human_durations_use_the_largest_unit_at_least_one():
    assert [human_duration(s) for s in (5, 90, 3600, 86400, 14 * 86400)] == [
        "5 s",
        "1.5 m",
        "1.0 h",
        "1.0 d",
        "2.0 w",
    ]


@pytest.mark.parametrize("text,mode", [("640", 0o640), ("0640", 0o640), ("0o600", 0o600), ("0", 0)])
def test_modes_are_octal_permission_bits(text, mode):
    assert parse_mode(text) == mode


@pytest.mark.parametrize("text", ["", "0999", "1777", "04755", "rw-r-----", "0x1a4", "-640"])
def test_bad_modes_are_usage_errors(text):
    with pytest.raises(UsageError, match="--mode"):
        parse_mode(text)


@pytest.mark.parametrize("mode", [-1, 0o1000, 0o4755, True, "0640"])
def test_library_modes_outside_the_permission_bits_are_refused(mode):
    with pytest.raises(UsageError, match="permission bits"):
        check_mode(mode)
