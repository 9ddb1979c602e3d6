"""``tagtune push DIR REPO_ID``: a tagger folder uploaded to the Hugging Face Hub as a model repo.

The repo is made when missing (``HfApi.create_repo``), the branch when ``--revision`` names a
missing one (``create_branch``, from main), and the files go up in one commit
(``create_commit``), large ones through the Hub's large-file storage as huggingface_hub chooses.
Only the files a copy of the tagger needs go up (:func:`tagtune.store.hub.tagger_files`:
config.json, the weights, the tokenizer files, tagtune.json, crf.json or span_head.safetensors,
and the model card README.md); files of those names that the branch holds and the folder does
not (another weight form, an earlier CRF) are deleted in the same commit, so the repo loads as
the folder does. Checkpoints, training records and temporary files stay local.

huggingface_hub finds the token (HF_TOKEN, or the one ``hf auth login`` saved) and the endpoint
(HF_ENDPOINT); its failures become one-line TagtuneErrors.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from pathlib import Path

from tagtune.errors import TagtuneError, first_line
from tagtune.store.hub import (BESIDE_WEIGHTS, DEFAULT_ENDPOINT, DEFAULT_REVISION, TOKENIZER_FILES,
                               is_network_error, is_repo_id, http_status, hub_endpoint, offline, tagger_files)
from tagtune.store.layout import CONFIG_FILE, CRF_FILE, ONNX_FILE, SETTINGS_FILE, SPAN_HEAD_FILE, WEIGHT_FILES
from tagtune.store.layout import TaggerSettings
from tagtune.store.runs import check_finished
from tagtune.version import __version__

_SHARD = re.compile(r"(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)")
_REPLACED = set(WEIGHT_FILES + (ONNX_FILE,) + BESIDE_WEIGHTS)
"""Names that a push makes the repo's copy of the folder's: deleted from the branch when the
folder lacks them (besides shards of a sharded form, _SHARD)."""


def push(model_dir: str | os.PathLike, repo_id: str, *, private: bool = False, revision: str | None = None,
         commit_message: str | None = None, dry_run: bool = False, progress: bool = True) -> str | None:
    """Upload the tagger folder ``model_dir`` (a finished ``tagtune train`` folder, or its ONNX
    export) to the Hub model repo ``repo_id`` in one commit.

    Args:
        model_dir: The tagger folder. Anything else (an unfinished run, a base model, a folder
            without weights) is refused before anything is sent.
        repo_id: ``name`` or ``namespace/name``; the repo is created when missing.
        private: Create the repo private (an existing repo keeps its visibility).
        revision: The branch to commit to, created from main when missing; None for main.
        commit_message: The commit's message; by default it names the folder and tagtune.
        dry_run: Print the files that would go up (path and size) on stdout and send nothing.
        progress: Say on stderr what is uploaded, and show huggingface_hub's progress bars.

    Returns:
        The commit's URL; None for a dry run.

    Raises:
        TagtuneError: one line for each way the folder or the upload can fail (not logged in,
            no write access, the Hub unreachable, ...).
    """
    folder = Path(model_dir).expanduser()
    files = shareable(folder, str(model_dir))
    check_repo_id(repo_id)
    if revision is not None and (not revision or revision.startswith(("/", "refs/")) or ".." in revision):
        raise TagtuneError(f"--revision {revision!r}: name a branch, such as main or v2")
    sizes = [(name, (folder / name).stat().st_size) for name in files]
    total = sum(size for _, size in sizes)
    if dry_run:
        width = max(len(name) for name, _ in sizes)
        for name, size in sizes:
            print(f"{name:<{width}}  {size_text(size)}")
        print(f"{len(sizes)} files, {size_text(total)}; nothing sent (--dry-run)")
        return None
    return upload(folder, files, repo_id, private=private, branch=revision or DEFAULT_REVISION,
                  message=commit_message or f"Upload tagger {folder.resolve().name} with tagtune {__version__}",
                  total=total, progress=progress)


def shareable(folder: Path, name: str) -> list[str]:
    """The files of ``folder`` that go up, after checking that it is a finished tagger: a
    one-line TagtuneError says what it is otherwise (``name`` is the folder as given)."""
    if not folder.exists():
        raise TagtuneError(f"{name}: no such folder")
    if not folder.is_dir():
        raise TagtuneError(f"{name}: is a file; push takes a tagger folder (what tagtune train --out wrote, "
                           "or its ONNX export)")
    check_finished(folder, name)
    if not (folder / CONFIG_FILE).is_file():
        what = "an empty folder" if not any(folder.iterdir()) else f"a folder without {CONFIG_FILE}"
        raise TagtuneError(f"{name}: {what}, not a tagger; push the folder tagtune train --out wrote, "
                           "or its ONNX export")
    if not (folder / SETTINGS_FILE).is_file():
        raise TagtuneError(f"{name}: a model folder without {SETTINGS_FILE}, not a tagger tagtune trained; "
                           "train one from it with tagtune train --model, then push that")
    files = tagger_files(folder)
    settings = TaggerSettings.read(folder, [])
    span_head = settings.head == "span" and ONNX_FILE not in files  # an ONNX graph holds its span head
    for needed, what in ((CRF_FILE, "a CRF"), (SPAN_HEAD_FILE, "a span head")):
        if (settings.crf if needed == CRF_FILE else span_head) and needed not in files:
            raise TagtuneError(f"{name}: {SETTINGS_FILE} names {what} but there is no {needed}; the folder is "
                               "incomplete")
    if not set(files) & set(TOKENIZER_FILES):
        raise TagtuneError(f"{name}: no tokenizer files (tokenizer.json, vocab.txt, ...); the folder is incomplete")
    return files


def size_text(n: int) -> str:
    """``12.3 MB`` (powers of 1000), ``850 bytes`` under a kilobyte."""
    return f"{n} bytes" if n < 1000 else f"{n / 1e6:,.1f} MB" if n >= 1_000_000 else f"{n / 1e3:.1f} kB"


def check_repo_id(repo_id: str) -> None:
    """A one-line TagtuneError unless ``repo_id`` names a model repo (``name`` or ``namespace/name``)."""
    kind = repo_id.split("/")[0] if repo_id.count("/") == 2 else None
    if kind in ("datasets", "spaces"):
        raise TagtuneError(f"{repo_id}: a {kind[:-1]} repo; push uploads a tagger to a model repo, "
                           f"such as {repo_id.split('/', 1)[1]}")
    if not is_repo_id(repo_id):
        raise TagtuneError(f"{repo_id}: not a Hub repo id; give name or namespace/name (letters, digits, - _ .), "
                           "such as your-name/wnut-minilm")


def upload(folder: Path, files: list[str], repo_id: str, *, private: bool, branch: str, message: str, total: int,
           progress: bool) -> str:
    """Create the repo (and branch) when missing, then commit ``files`` of ``folder`` to ``branch``
    with deletions of the tagger files the branch holds and the folder lacks; the commit's URL."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    if offline():
        raise TagtuneError(f"{repo_id}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it to push")
    endpoint = hub_endpoint()
    shown = endpoint or DEFAULT_ENDPOINT
    api = HfApi(endpoint=endpoint, library_name="tagtune", library_version=__version__)
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if progress else (lambda text: None)
    with _push_errors(repo_id, branch, shown), _bars(progress):
        api.create_repo(repo_id, repo_type="model", private=True if private else None, exist_ok=True)
        if branch != DEFAULT_REVISION:
            api.create_branch(repo_id, repo_type="model", branch=branch, exist_ok=True)
        held = [s.rfilename for s in api.model_info(repo_id, revision=branch).siblings or []]
        stale = [n for n in held if "/" not in n and (n in _REPLACED or _SHARD.fullmatch(n)) and n not in files]
        where = f"{repo_id}" + (f"@{branch}" if branch != DEFAULT_REVISION else "")
        say(f"uploading {len(files)} files ({size_text(total)}) from {folder} to {where} at {shown}"
            + (f"; removing {', '.join(stale)} from the repo" if stale else ""))
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
        operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
        commit = api.create_commit(repo_id, operations, commit_message=message, repo_type="model", revision=branch)
    say(f"pushed {where}: commit {commit.oid[:12]}")
    return commit.commit_url


@contextlib.contextmanager
def _bars(shown: bool):
    """huggingface_hub's progress bars off unless ``shown``, as they were afterwards; and
    without httpx's warning about how huggingface_hub calls it, which says nothing to users."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not shown:
        disable_progress_bars()
    try:
        with warnings.catch_warnings():  # huggingface_hub's git-lfs upload passes httpx a file as data=
            warnings.filterwarnings("ignore", message=r"Use 'content=<\.\.\.>'", category=DeprecationWarning)
            yield
    finally:
        if not shown and not was_disabled:
            enable_progress_bars()


_LOGIN = "log in with `hf auth login` or set HF_TOKEN to a token with write access"


@contextlib.contextmanager
def _push_errors(repo_id: str, branch: str, endpoint: str):
    """huggingface_hub's exceptions during a push as one-line TagtuneErrors."""
    from huggingface_hub import errors, get_token

    try:
        yield
    except TagtuneError:
        raise
    except errors.HfHubHTTPError as e:
        status = http_status(e)
        if status == 401 and not get_token():
            raise TagtuneError(f"{repo_id}: not logged in to the Hub at {endpoint}; {_LOGIN}") from None
        if status == 401:
            raise TagtuneError(f"{repo_id}: the Hub at {endpoint} refused the token in use (HTTP 401: expired or "
                               f"revoked?); {_LOGIN}") from None
        if status == 403:
            raise TagtuneError(f"{repo_id}: the token in use has no write access to {repo_id} at {endpoint} "
                               "(HTTP 403); log in as an account that can write there (`hf auth login`), or set "
                               "HF_TOKEN to a token with write access") from None
        if isinstance(e, errors.RevisionNotFoundError):
            raise TagtuneError(f"{repo_id}: no branch {branch!r} at {endpoint}, and it could not be made") from None
        if isinstance(e, errors.RepositoryNotFoundError):
            raise TagtuneError(f"{repo_id}: the Hub at {endpoint} has no such repo and did not create it; check the "
                               f"namespace is yours or an organisation you write to ({_LOGIN})") from None
        url = getattr(getattr(e, "response", None), "url", None) or endpoint
        raise TagtuneError(f"{repo_id}: the Hub answered HTTP {status} for {url} ({first_line(e)}); nothing was "
                           "committed; try again later") from None
    except ValueError as e:
        if "README.md" not in str(e):
            raise
        raise TagtuneError(f"{repo_id}: the Hub refused the front matter of README.md ({first_line(e)}); "
                           "fix it (see https://huggingface.co/docs/hub/model-cards) and push again") from None
    except Exception as e:
        cause = e.__cause__ if isinstance(e, RuntimeError) and e.__cause__ else e  # an upload's error, wrapped
        if is_network_error(cause) or is_network_error(e):
            raise TagtuneError(f"{repo_id}: the Hub at {endpoint} cannot be reached ({first_line(cause)}); "
                               "check the network (and HF_ENDPOINT), then push again") from None
        if isinstance(cause, errors.HfHubHTTPError):
            raise TagtuneError(f"{repo_id}: an upload failed ({first_line(cause)}); nothing was committed; "
                               "push again") from None
        raise
