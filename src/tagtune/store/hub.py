"""Model sources to local folders: a folder as it is, or a Hugging Face Hub repo id.

``org/name[@revision]`` (or ``name``) is looked up in the HF cache first, laid out as
huggingface_hub lays it out (``models--org--name/refs/REVISION``, ``snapshots/COMMIT``). A
complete snapshot there is used without touching the network, so a cached model works with
HF_HUB_OFFLINE=1 or no network at all. Otherwise huggingface_hub lists the repo at the revision
and downloads into that cache only the files tagtune reads (:func:`files_to_fetch`), with its own
progress bars and atomic writes; transformers finds them there too, and tagtune finds what
transformers or ``hf download`` put there.

HF_ENDPOINT, HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE are read when :func:`resolve` is called,
with huggingface_hub's rules; HF_TOKEN or a token saved by ``hf auth login`` is sent by
huggingface_hub itself. This module imports neither torch nor, until a repo id needs it,
huggingface_hub.
"""

from __future__ import annotations

import contextlib
import difflib
import itertools
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from tagtune.errors import TagtuneError, first_line
from tagtune.store.layout import (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, CONFIG_FILE, CRF_FILE, ONNX_FILE,
                                  SETTINGS_FILE, SPAN_HEAD_FILE)
from tagtune.store.layout import WEIGHT_FILES as TORCH_WEIGHT_FILES  # in tagtune's order of preference
from tagtune.text.tokenizer import TOKENIZER_FILES as _TOKENIZER_FILES
from tagtune.version import __version__
TOKENIZER_FILES = tuple(dict.fromkeys(_TOKENIZER_FILES + ("spm.model",)))
BESIDE_WEIGHTS = TOKENIZER_FILES + (SETTINGS_FILE, CRF_FILE, SPAN_HEAD_FILE, ADAPTER_CONFIG_FILE)
"""The files a tagger has beside config.json and its weights, each where it has it (a LoRA
tagger's adapter_config.json, which names its base model)."""
CARD_FILE = "README.md"
DEFAULT_REVISION = "main"
DEFAULT_ENDPOINT = "https://huggingface.co"

_NAME = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"(?:{_NAME}/)?{_NAME}")
_REVISION = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")
_COMMIT = re.compile(r"[0-9a-f]{40}")


# ---------------------------------------------------------------------------------------------
# Sources


def resolve(source: str | os.PathLike) -> Path:
    """A local model folder for ``source``: an existing folder as it is, or the snapshot folder of
    a Hub repo id ``org/name[@revision]`` in the HF cache, downloaded there first if needed.

    Anything else (a file, a path that does not exist) is a TagtuneError, as is every way a
    download can fail; each message is one line that says what to do. A name that is no folder
    but could be a repo id is looked up as one, and its message speaks of both: where the folder
    was looked for, a close folder name when there is one, and why the Hub cannot give it; a
    name that cannot be a repo id never reaches the Hub.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise TagtuneError(f"{source}: is a file; expected a model folder or a Hub repo id")
    parsed = parse_repo_id(str(source))
    if parsed is None:  # a path, never looked up on the Hub
        raise TagtuneError(f"{source}: {_no_folder(str(source), close_folder(str(source)))}")
    return fetch(*parsed, source=str(source))


def _no_folder(source: str, guess: str | None) -> str:
    """``no such folder``, where a relative ``source`` was looked for, and ``guess``, the
    folder it may have meant (see :func:`close_folder`)."""
    where = "" if os.path.isabs(os.path.expanduser(source)) else f" in {Path.cwd()}"
    return f"no such folder{where}" + (f"; did you mean {guess}?" if guess else "")


def close_folder(source: str, cutoff: float = 0.75) -> str | None:
    """The existing folder ``source`` may have meant: each of its parts that is no folder is
    replaced by the closest folder name beside it (difflib), spelled as ``source`` is; None when
    a part has no close name or nothing was replaced."""
    parts, replaced = source.split("/"), False
    for i, part in enumerate(parts):
        if part in ("", ".", "..", "~"):
            continue
        parent = Path(os.path.expanduser("/".join(parts[:i]) or ("/" if source.startswith("/") else ".")))
        if (parent / part).is_dir():
            continue
        try:
            with os.scandir(parent) as entries:
                names = [e.name for e in itertools.islice(entries, 10_000)
                         if e.is_dir() and (part.startswith(".") or not e.name.startswith("."))]
        except OSError:
            return None
        match = difflib.get_close_matches(part, names, n=1, cutoff=cutoff)
        if not match:
            return None
        parts[i], replaced = match[0], True
    return "/".join(parts) if replaced else None


def parse_repo_id(text: str) -> tuple[str, str] | None:
    """``(repo, revision)`` for ``org/name[@revision]`` or ``name[@revision]`` (revision "main"
    when not given); None when ``text`` is not a repo id, so a path (``./x``, ``/x``, ``~/x``,
    ``a/b/c``, ``C:\\x``). A revision that could name a place outside the cache (``..``, an
    absolute path) is a TagtuneError."""
    repo, at, revision = text.partition("@")
    if not is_repo_id(repo):
        return None
    if not at:
        return repo, DEFAULT_REVISION
    if not _REVISION.fullmatch(revision) or ".." in revision or "." in revision.split("/"):
        raise TagtuneError(f"{text}: {revision!r} is not a valid revision (a branch, tag or commit id)")
    return repo, revision


def is_repo_id(text: str) -> bool:
    """The Hub's rule for repo ids: ``name`` or ``namespace/name``, ASCII letters, digits, ``_``,
    ``-`` and ``.``, not starting or ending with ``-`` or ``.``, no ``--`` or ``..``, not ``.git``."""
    return (bool(_REPO_ID.fullmatch(text)) and "--" not in text and ".." not in text
            and not text.endswith(".git"))


def _label(repo: str, revision: str) -> str:
    return repo if revision == DEFAULT_REVISION else f"{repo}@{revision}"


# ---------------------------------------------------------------------------------------------
# Settings, read when called


def _is_true(value: str | None) -> bool:
    return value is not None and value.upper() in {"1", "ON", "YES", "TRUE"}


def hf_cache_dir() -> Path:
    """The hub cache as huggingface_hub finds it: HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else
    HF_HOME/hub, else XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set now, or set when huggingface_hub was imported."""
    if _is_true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    constants = sys.modules.get("huggingface_hub.constants")
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def hub_endpoint() -> str | None:
    """HF_ENDPOINT as set now; None for huggingface_hub's default."""
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


# ---------------------------------------------------------------------------------------------
# Which files


def weight_form(names, read_index) -> list[str] | None:
    """The weight files of the one form tagtune loads among ``names``: model.safetensors, else
    the safetensors index and its shards, else pytorch_model.bin, else the .bin index and its
    shards, else a LoRA tagger's adapter_model.safetensors (its base model is found when it is
    opened), else model.onnx (an exported tagger). ``read_index(name)`` gives an index's shard
    names. None when there is no such form."""
    for name in TORCH_WEIGHT_FILES:
        if name in names:
            return [name, *read_index(name)] if name.endswith(".index.json") else [name]
    for name in (ADAPTER_WEIGHTS_FILE, ONNX_FILE):
        if name in names:
            return [name]
    return None


def shard_names(index: Path) -> list[str]:
    """The shard files a ``*.index.json`` names (its weight_map values), in order."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise TagtuneError(f"{index}: not a readable weight index ({e})") from None


def files_to_fetch(names, label: str) -> tuple[list[str], str]:
    """From a repo's file list: the files of BESIDE_WEIGHTS it has (tokenizer files, tagtune.json,
    crf.json, span_head.safetensors), and the first file of the weight form tagtune loads (an
    index when the weights are sharded).

    Downloads take these first, then an index's shards, and config.json last, so a snapshot
    that has config.json from tagtune is complete. Files in subfolders, READMEs, the other
    weight forms and other frameworks' weights are never fetched. ``label`` names the repo in
    errors: no config.json, or no weights tagtune can read."""
    top = sorted(n for n in names if "/" not in n)
    form = weight_form(top, lambda name: [])
    if CONFIG_FILE not in top:
        raise TagtuneError(f"{label}: the repo has no {CONFIG_FILE}, so it is not a model tagtune can "
                           f"read; it has {_listing(names)}")
    if form is None:
        raise TagtuneError(f"{label}: the repo has no weights tagtune can read ({', '.join(TORCH_WEIGHT_FILES)} "
                           f"or {ONNX_FILE}); it has {_listing(names)}")
    extras = [n for n in BESIDE_WEIGHTS if n in top]
    return extras, form[0]


def tagger_files(folder: Path) -> list[str]:
    """The files of the model folder ``folder`` that a copy of it needs, as :func:`files_to_fetch`
    would take them from a repo of it: config.json, every file of its weight form, the files of
    BESIDE_WEIGHTS it has, and its model card (README.md) when it has one. Training records,
    checkpoints, other weight forms and anything in a subfolder are left out. A TagtuneError
    names what is missing: config.json, weights tagtune can read, an index's shards."""
    names = {p.name for p in folder.iterdir() if p.is_file()}
    form = weight_form(names, lambda name: shard_names(folder / name))
    if CONFIG_FILE not in names or form is None:
        what = (CONFIG_FILE if CONFIG_FILE not in names
                else f"weights tagtune can read ({', '.join(TORCH_WEIGHT_FILES)} or {ONNX_FILE})")
        raise TagtuneError(f"{folder}: no {what}, so it is not a model folder; it has {_listing(names)}")
    missing = [name for name in form if name not in names]
    if missing:
        raise TagtuneError(f"{folder}: {form[0]} names shards the folder does not have: {_listing(missing)}")
    extras = [n for n in BESIDE_WEIGHTS + (CARD_FILE,) if n in names]
    return [CONFIG_FILE, *form, *extras]


def _listing(names, limit: int = 12) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit]) or "no files"
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def is_complete(folder: Path) -> bool:
    """A snapshot folder holds config.json, a tokenizer file and every file of its weight form."""
    names = {p.name for p in folder.iterdir()}
    if CONFIG_FILE not in names or not names.intersection(TOKENIZER_FILES):
        return False
    try:
        form = weight_form(names, lambda name: shard_names(folder / name))
    except TagtuneError:
        return False
    return form is not None and all((folder / name).is_file() for name in form)


# ---------------------------------------------------------------------------------------------
# The cache and the Hub


def cached_snapshot(storage: Path, revision: str) -> Path | None:
    """The snapshot folder of ``revision`` (a commit id, or a branch or tag recorded in refs/)
    in a repo's cache folder, or None."""
    if _COMMIT.fullmatch(revision):
        commit = revision
    else:
        ref = storage / "refs" / revision
        commit = ref.read_text().strip() if ref.is_file() else ""
    folder = storage / "snapshots" / commit
    return folder if _COMMIT.fullmatch(commit) and folder.is_dir() else None


def fetch(repo: str, revision: str = DEFAULT_REVISION, source: str | None = None) -> Path:
    """The snapshot folder of ``repo`` at ``revision``: from the cache when it is complete there,
    else downloaded into it (see the module docstring). Offline, a cached snapshot with
    config.json is returned even when incomplete, so that loading names what is missing."""
    source = source or _label(repo, revision)
    cache = hf_cache_dir()
    storage = cache / ("models--" + repo.replace("/", "--"))
    cached = cached_snapshot(storage, revision)
    if cached is not None and is_complete(cached):
        return cached
    if offline():
        if cached is not None and (cached / CONFIG_FILE).is_file():
            return cached
        raise TagtuneError(_not_cached_offline(source, cache))
    return _download(repo, revision, cache, storage, source)


def _download(repo: str, revision: str, cache: Path, storage: Path, source: str) -> Path:
    """List the repo at ``revision``, then fetch the chosen files by commit id; config.json is
    fetched by ``revision`` so that huggingface_hub records the revision in refs/."""
    from huggingface_hub import HfApi, hf_hub_download

    endpoint = hub_endpoint()
    where = _Where(source, repo, revision, cache, endpoint or DEFAULT_ENDPOINT)
    api = HfApi(endpoint=endpoint, library_name="tagtune", library_version=__version__)
    with _hub_errors(where):
        info = api.model_info(repo, revision=revision)
    commit = info.sha
    if not commit:
        raise TagtuneError(f"{source}: the Hub at {where.endpoint} gave no commit id for {where.label}")
    names = [s.rfilename for s in info.siblings or []]
    extras, weights = files_to_fetch(names, source)

    def get(filename: str, by: str = commit) -> Path:
        with _hub_errors(where):
            return Path(hf_hub_download(repo, filename, revision=by, cache_dir=str(cache), endpoint=endpoint,
                                        library_name="tagtune", library_version=__version__))

    for name in extras:
        get(name)
    index = get(weights)
    shards = shard_names(index) if weights.endswith(".index.json") else []
    missing = [name for name in shards if name not in names]
    if missing:
        raise TagtuneError(f"{source}: {weights} names shards the repo does not have: {_listing(missing)}")
    for name in shards:
        get(name)
    config = get(CONFIG_FILE, by=revision)
    if config.parent.name != commit:
        raise TagtuneError(f"{source}: {revision!r} moved to another commit during the download; run again")
    return storage / "snapshots" / commit


@dataclass(frozen=True)
class _Where:
    """What an error message about one download names."""

    source: str
    repo: str
    revision: str
    cache: Path
    endpoint: str

    @property
    def label(self) -> str:
        return _label(self.repo, self.revision)


_LOGIN = "log in with `hf auth login` or set HF_TOKEN"
_TOKEN = "(`hf auth login` or HF_TOKEN)"
_NETWORK_MODULES = {"httpx", "httpx2", "requests", "urllib3", "ssl", "socket"}


def http_status(error) -> int | None:
    """The HTTP status of a huggingface_hub error's response, None where it has none."""
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def is_network_error(error: BaseException) -> bool:
    """Whether ``error`` says the server could not be reached (refused, timed out, unresolved)."""
    return (isinstance(error, (ConnectionError, TimeoutError))
            or type(error).__module__.partition(".")[0] in _NETWORK_MODULES)


@contextlib.contextmanager
def _hub_errors(where: _Where):
    """huggingface_hub's exceptions as one-line TagtuneErrors that say what to do."""
    from huggingface_hub import errors

    try:
        yield
    except TagtuneError:
        raise
    except errors.OfflineModeIsEnabled:
        raise TagtuneError(_not_cached_offline(where.source, where.cache)) from None
    except errors.LocalEntryNotFoundError as e:
        raise TagtuneError(_unreachable(where, e.__cause__ or e)) from None
    except errors.GatedRepoError as e:
        raise TagtuneError(_gated(where, http_status(e))) from None
    except errors.RepositoryNotFoundError:
        local = _no_folder(where.source, close_folder(where.source))
        raise TagtuneError(f"{where.source}: {local}, and no model {where.repo} on the Hub at {where.endpoint} "
                           f"(if it is private or gated, {_LOGIN})") from None
    except errors.RevisionNotFoundError:
        raise TagtuneError(f"{where.source}: {where.repo} has no revision {where.revision!r} on the Hub at "
                           f"{where.endpoint} (a branch, tag or commit id)") from None
    except errors.HfHubHTTPError as e:
        raise TagtuneError(_http_error(where, e)) from None
    except Exception as e:
        if is_network_error(e):
            raise TagtuneError(_unreachable(where, e)) from None
        if isinstance(e, OSError):
            raise TagtuneError(f"{where.source}: cannot write to the Hugging Face cache at {where.cache} "
                               f"({first_line(e)})") from None
        raise


def _gated(where: _Where, status: int | None) -> str:
    page = f"{where.endpoint}/{where.repo}"
    if status == 403:
        return (f"{where.source}: {where.repo} is gated and the Hub token in use has no access to it; "
                f"request access at {page}, or log in as an account that has it {_TOKEN}")
    return f"{where.source}: {where.repo} is gated; request access at {page}, then {_LOGIN}"


def _http_error(where: _Where, error) -> str:
    status = http_status(error)
    if status in (401, 403):
        return (f"{where.source}: the Hub at {where.endpoint} refused access to {where.repo} "
                f"(HTTP {status}); log in with a token that can read it {_TOKEN}")
    url = getattr(getattr(error, "response", None), "url", None) or where.endpoint
    shown = f"HTTP {status}" if status else first_line(error)
    return f"{where.source}: the Hub answered {shown} for {url}; try again later"


def _not_cached_offline(source: str, cache: Path) -> str:
    return _neither(source, f"not in the Hugging Face cache at {cache}, and HF_HUB_OFFLINE is set so it cannot be "
                            "downloaded", "unset HF_HUB_OFFLINE to fetch it from the Hub")


def _unreachable(where: _Where, error: BaseException) -> str:
    return _neither(where.source, f"not in the Hugging Face cache at {where.cache}, and the Hub at {where.endpoint} "
                                  f"cannot be reached ({first_line(error)})",
                    "connect, or set HF_HUB_OFFLINE=1 once it is cached")


def _neither(source: str, why: str, advice: str) -> str:
    """The message for a name that is no folder here and, as a Hub id, a model that cannot be
    had (``why``; ``advice`` says what to do). The folder side comes first where the name looks
    meant as a folder: a folder of a close name exists, or its first part is a folder here."""
    guess = close_folder(source)
    if guess or ("/" in source and Path(source.split("/")[0]).is_dir()):
        return f"{source}: {_no_folder(source, guess)}{' As' if guess else '; as'} a Hub id it is {why}"
    return f"{source}: {why}; {advice} (nor is it a folder in {Path.cwd()})"
