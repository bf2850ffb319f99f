"""Download the standard IDX files of MNIST, Fashion-MNIST and KMNIST and convert them.

Each file is fetched from a mirror (``--mirror`` or ``$DLRUN_MIRROR``; the dataset's own
by default) into ``<data_home>/downloads/<name>/``, with HTTP ``Range`` requests to resume
a download that stopped, retries with exponential backoff, and a SHA-256 check against the
digest of the standard file; a file that fails the check is deleted and never converted.
The four files then become a dataset through the IDX importer (written atomically).

A mirror is a base URL: the files are fetched from ``<mirror>/<file name>``; a ``{name}``
in it is replaced by the dataset's name, so one mirror can serve all three.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from dlrun.datasets.importers import import_path, target_path
from dlrun.datasets.store import data_home
from dlrun.errors import ConfigError, DataError

MIRROR_ENV = "DLRUN_MIRROR"

_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
          "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _digests(*sha256: str) -> dict[str, str]:
    """``{file name: digest}`` from the digests of the four files, in the order of _FILES."""
    return dict(zip(_FILES, sha256, strict=True))


# The SHA-256 of the standard files (as recorded by TensorFlow Datasets' url_checksums).
SOURCES: dict[str, dict] = {
    "mnist": {
        "mirror": "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "sha256": _digests(
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        ),
        "class_names": [str(c) for c in range(10)],
        "source": "http://yann.lecun.com/exdb/mnist/ (LeCun, Cortes, Burges)",
        "license": "CC BY-SA 3.0",
        "description": "MNIST handwritten digits, 28x28 grey, 60,000 train / 10,000 test",
    },
    "fashion-mnist": {
        "mirror": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "sha256": _digests(
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        ),
        "class_names": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                        "Shirt", "Sneaker", "Bag", "Ankle boot"],
        "source": "https://github.com/zalandoresearch/fashion-mnist (Xiao, Rasul, Vollgraf)",
        "license": "MIT",
        "description": "Zalando article images, 28x28 grey, 60,000 train / 10,000 test",
    },
    "kmnist": {
        "mirror": "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
        "sha256": _digests(
            "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
            "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
            "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
            "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
        ),
        "class_names": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
        "source": "https://github.com/rois-codh/kmnist (Clanuwat et al., CODH)",
        "license": "CC BY-SA 4.0",
        "description": "Kuzushiji-MNIST cursive Japanese characters, 28x28 grey, "
        "60,000 train / 10,000 test",
    },
}

# What a dropped or refused connection raises from urllib.
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                   TimeoutError, OSError)


def fetch(
    name: str,
    *,
    mirror: str | None = None,
    out: str | os.PathLike | None = None,
    downloads: str | os.PathLike | None = None,
    sha256: Mapping[str, str] | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30.0,
    overwrite: bool = False,
    echo: Callable[[str], None] = lambda message: None,
) -> Path:
    """Download dataset ``name`` (``mnist``, ``fashion-mnist``, ``kmnist``), verify it and
    write it as ``<out>/<name>.zarr``; returns that path.

    Parameters
    ----------
    mirror : base URL of the files; default ``$DLRUN_MIRROR``, else the dataset's own.
    out : folder of the dataset; default :func:`~dlrun.datasets.store.data_home`.
    downloads : folder for the downloaded files; default ``<data_home>/downloads/<name>``.
    sha256 : ``{file name: hex digest}`` replacing the standard digests (tests, mirrors of
        other versions).
    retries, backoff, timeout : attempts per file after the first, the first wait in
        seconds (doubled after each failure), and the socket timeout.
    overwrite : replace an existing dataset of that name.
    echo : called with a line of progress now and then.
    """
    if name not in SOURCES:
        raise ConfigError(f"no dataset {name!r} to fetch; choose one of {', '.join(SOURCES)}")
    spec = SOURCES[name]
    target = target_path(name, out)
    if target.exists() and not overwrite:
        raise DataError(
            f"{target} already exists; pass overwrite=True (--overwrite) to fetch again"
        )
    base = (mirror or os.environ.get(MIRROR_ENV) or spec["mirror"]).replace("{name}", name)
    folder = Path(downloads) if downloads else data_home() / "downloads" / name
    folder.mkdir(parents=True, exist_ok=True)
    digests = dict(sha256) if sha256 is not None else spec["sha256"]
    for file in _FILES:
        url = base.rstrip("/") + "/" + file
        download(url, folder / file, sha256=digests[file], retries=retries, backoff=backoff,
                 timeout=timeout, echo=echo)
    echo(f"converting to {target}")
    return import_path(folder, name=name, out=out, kind="idx", overwrite=overwrite,
                       class_names=spec["class_names"], source=f"{spec['source']}; {base}",
                       license=spec["license"], description=spec["description"])


def download(
    url: str,
    dest: Path,
    *,
    sha256: str,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30.0,
    echo: Callable[[str], None] = lambda message: None,
) -> Path:
    """Download ``url`` to ``dest``, resuming and retrying, and check its SHA-256.

    The bytes go to ``dest.part`` first; ``dest`` appears only once the digest matches.
    An existing ``dest`` with the right digest is kept. Raises DataError when the attempts
    run out or the file's digest is wrong.
    """
    dest = Path(dest)
    if dest.exists() and _sha256(dest) == sha256:
        echo(f"{dest.name}: already downloaded")
        return dest
    part = dest.with_name(dest.name + ".part")
    last = "no attempt"
    for attempt in range(retries + 1):
        if attempt:
            wait = backoff * 2 ** (attempt - 1)
            echo(f"{dest.name}: {last}; retrying in {wait:g} s ({attempt}/{retries})")
            time.sleep(wait)
        try:
            _get(url, part, timeout)
        except _NETWORK_ERRORS as exc:
            last = f"download stopped ({exc})"
            continue
        digest = _sha256(part)
        if digest == sha256:
            part.replace(dest)
            echo(f"{dest.name}: {dest.stat().st_size:,} bytes, sha256 ok")
            return dest
        part.unlink()  # wrong bytes: resuming would keep them, start again
        last = f"sha256 {digest} is not the expected {sha256}"
    raise DataError(
        f"could not download {url} in {retries + 1} attempts: {last}; check the network "
        f"or choose another mirror (--mirror or ${MIRROR_ENV}); fetching again resumes "
        "what was downloaded"
    )


def _get(url: str, part: Path, timeout: float) -> None:
    """Append what is missing of ``url`` to ``part`` (a Range request when part exists)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "dlrun"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the file is whole
            return
        if 400 <= exc.code < 500 and exc.code not in (408, 429):
            raise DataError(f"{url}: HTTP {exc.code} {exc.reason}; check the mirror") from exc
        raise
    with response:
        resumed = have and response.status == 206
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        got = 0
        with open(part, "ab" if resumed else "wb") as f:
            while block := response.read(1 << 16):
                f.write(block)
                got += len(block)
    if expected is not None and got < expected:
        raise ConnectionError(f"connection closed after {got} of {expected} bytes")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
