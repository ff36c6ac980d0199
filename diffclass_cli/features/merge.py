"""`diffclass merge`: join the shard files of one `featurize --shard I/N` fan-out into the
file a single `featurize` run would have written (same rows, order and values)."""

from datetime import datetime, timezone
from pathlib import Path

from diffclass_cli.console import log
from diffclass_cli.errors import DiffclassError
from diffclass_cli.features.extract import NO_PROVIDER, Shard
from diffclass_cli.features.h5 import COMMIT_ATTR, PROGRESS_ATTR, FeatureWriter, copy_rows, open_feature_file
from diffclass_cli.files import atomic_output, refuse_overwrite

MUST_MATCH = ("extractor_sha256", "source", "source_fingerprint", "source_images", "feature_dim", "dtype")


def merge(out: Path, parts: list[Path], overwrite: bool = False) -> dict:
    """Check that `parts` are every shard, once, of one source and one extractor; write them
    to `out` in shard order; returns a summary."""
    refuse_overwrite(out, overwrite)
    if not parts:
        raise DiffclassError("give the shard files to merge")
    headers = [(path, _header(path)) for path in parts]
    first_path, first = headers[0]
    for path, header in headers:
        differ = [key for key in MUST_MATCH if header["attrs"][key] != first["attrs"][key]]
        differ += ["class_names"] if header["class_names"] != first["class_names"] else []
        if differ:
            raise DiffclassError(f"{path} and {first_path} differ in {differ[0]}: they are not shards of one run")
    count = first["shard"].count
    if any(h["shard"].count != count for _, h in headers):
        raise DiffclassError("the parts were cut into different numbers of shards: " +
                             ", ".join(f"{p} is {h['shard']}" for p, h in headers))
    by_index = {}
    for path, header in headers:
        index = header["shard"].index
        if index in by_index:
            raise DiffclassError(f"shard {header['shard']} is given twice: {by_index[index]} and {path}")
        expected = len(header["shard"].rows(first["attrs"]["source_images"]))
        if header["done"] != expected:
            raise DiffclassError(f"{path} covers {header['done']} of the {expected} images of shard {header['shard']}")
        by_index[index] = path
    missing = sorted(set(range(count)) - set(by_index))
    if missing:
        raise DiffclassError(f"shard(s) {', '.join(f'{i}/{count}' for i in missing)} missing")

    kept = {key: value for key, value in first["attrs"].items() if key not in ("rows", PROGRESS_ATTR, COMMIT_ATTR)}
    attrs = {**kept, "shard": str(Shard()), "merged_from": count,
             "provider": ",".join(sorted({h["attrs"]["provider"] for _, h in headers} - {NO_PROVIDER}))
             or NO_PROVIDER,
             "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with atomic_output(out, overwrite) as tmp:
        writer = FeatureWriter(tmp, int(first["attrs"]["feature_dim"]), attrs, first["class_names"],
                               dtype=first["attrs"]["dtype"])
        try:
            for index in range(count):
                with open_feature_file(by_index[index]) as reader:
                    copy_rows(reader, writer)
            rows = int(writer.file.attrs["rows"])
        finally:
            writer.close()
    log.info(f"wrote {out}: {rows} rows from {count} shards")
    return {"rows": rows, "shards": count}


def _header(path: Path) -> dict:
    with open_feature_file(path) as reader:
        attrs = reader.attrs | {"dtype": reader.dtype}
        if "shard" not in attrs:
            raise DiffclassError(f"{path} was written before shards existed; featurize it again")
        missing = [key for key in (*MUST_MATCH, PROGRESS_ATTR, "provider") if key not in attrs]
        if missing:
            raise DiffclassError(f"{path} is damaged: it has no {', '.join(missing)} (featurize it again)")
        return {"attrs": attrs, "shard": Shard.parse(attrs["shard"]), "done": int(attrs[PROGRESS_ATTR]),
                "class_names": reader.class_names}
