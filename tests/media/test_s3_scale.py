"""Scale scenario (slow): four volumes backed up concurrently, twice, into one bucket and one
catalog; listed, pruned with a policy (deleting through the S3 medium), restored, and the catalog
rebuilt from the bucket alone. Oracles: ``cmp`` of restored images, the bucket's own listing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.s3, pytest.mark.slow]

MiB = 1 << 20


def _volpack(env, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "volpack", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _all_ok(procs: list[subprocess.Popen]) -> list[str]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, (p.args, out, err)
        outs.append(out)
    return outs


def _fill(path, size: int, seed: int) -> None:
    rng = __import__("random").Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for _ in range(6):
            f.seek(rng.randrange(0, size - MiB) & ~4095)
            f.write(os.urandom(rng.randrange(4096, MiB)))


def test_four_volumes_backed_up_concurrently_then_listed_pruned_restored(
    weed_mini, tmp_path, monkeypatch
):
    from s3_server import use_s3_server
    from volpack import media

    use_s3_server(weed_mini, monkeypatch)
    env = weed_mini.env()
    env["VOLPACK_S3_PART_SIZE"] = "5Mi"
    catalog = str(tmp_path / "catalog.sqlite")
    bucket = weed_mini.new_bucket()
    images = [tmp_path / f"vol{i}.img" for i in range(4)]

    for round_ in (1, 2):
        for i, image in enumerate(images):
            _fill(image, (16 + 8 * i) * MiB, seed=100 * round_ + i)
        _all_ok(
            [
                _volpack(
                    env,
                    "backup",
                    str(image),
                    f"s3://{bucket}/host{i}/r{round_}.vpk",
                    "--catalog",
                    catalog,
                )  # fmt: skip
                for i, image in enumerate(images)
            ]
        )

    (listed,) = _all_ok([_volpack(env, "list", "--json", "--catalog", catalog)])
    assert len(json.loads(listed)) == 8
    keys = weed_mini.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert len(keys) == 8

    _all_ok([_volpack(env, "prune", "--keep-last", "1", "--catalog", catalog)])
    remaining = [url for url, _, _ in media.list_archives(f"s3://{bucket}/")]
    assert remaining == [f"s3://{bucket}/host{i}/r2.vpk" for i in range(4)]

    restored = [tmp_path / f"restored{i}.img" for i in range(4)]
    _all_ok(
        [
            _volpack(env, "restore", f"s3://{bucket}/host{i}/r2.vpk", str(restored[i]))
            for i in range(4)
        ]
    )
    for image, out in zip(images, restored, strict=True):
        assert subprocess.run(["cmp", str(image), str(out)]).returncode == 0

    os.unlink(catalog)
    _all_ok([_volpack(env, "catalog", "rebuild", f"s3://{bucket}/", "--catalog", catalog)])
    (listed,) = _all_ok([_volpack(env, "list", "--json", "--catalog", catalog)])
    urls = sorted(json.dumps(entry) for entry in json.loads(listed))
    assert len(urls) == 4
    assert all(f"s3://{bucket}/host{i}/r2.vpk" in " ".join(urls) for i in range(4))
