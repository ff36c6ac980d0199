"""What the labeling page does, as plain methods (the server only calls them): the images
`suggest` picks, most valuable first; each answer saved at once to the labels table (`path,label`,
what `fit --labels` reads), so a closed page or terminal loses nothing and a new session goes on
where the last one stopped; the labels that look wrong; the fitted head; the next round."""

import csv
import io
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffclass_cli.data.labels_table import read_labels_table, spreadsheet_safe
from diffclass_cli.data.loading import to_mode
from diffclass_cli.data.sources import UNLABELED, UnreadableImage, open_source
from diffclass_cli.errors import DiffclassError
from diffclass_cli.features.h5 import check_finite, open_feature_file
from diffclass_cli.files import atomic_output
from diffclass_cli.heads import MAX_UNLABELED
from diffclass_cli.heads.models import spread_sample
from diffclass_cli.heads.suggest import suggest_rows, suspicious_labels

MAX_LABEL = 200  # characters of a class name
SHOWN_SIDE = 224  # thumbnails are at most this many pixels a side; small images are enlarged to it
LOOKS_LIKE_EXAMPLES = 3


@dataclass
class Answer:
    row: int
    before: str | None  # the label the row had (None: none)
    skipped: bool = False


@dataclass
class LabelSession:
    """A pool feature file, its images and the labels table the answers go to."""

    pool: Path
    labels_path: Path
    budget: int  # labels to reach in this round (those in the table count)
    out: Path | None = None
    classes: list[str] = field(default_factory=list)
    source: str | None = None
    seed: int = 0
    max_rows: int = MAX_UNLABELED

    def __post_init__(self):
        self.lock = threading.Lock()
        with open_feature_file(self.pool) as reader:
            own = reader.labels
            rows = np.sort(np.concatenate([spread_sample(np.flatnonzero(own == UNLABELED), self.max_rows, self.seed),
                                           np.flatnonzero(own != UNLABELED)]))
            table = reader.take(rows)
            recorded_source = str(reader.attrs.get("source", ""))
        check_finite(table, self.pool)
        self.features, self.paths = table.features, table.paths
        self.row_of = {path: i for i, path in enumerate(self.paths)}
        self.labels: dict[str, str] = {p: table.class_names[y] for p, y in zip(self.paths, table.labels) if y >= 0}
        if self.labels_path.exists():
            found = read_labels_table(self.labels_path)
            self.labels.update({p: label for p, label in found.items() if p in self.row_of})
        self.image_source = open_source(self.source or recorded_source)
        self.image_row = {image_id: i for i, image_id in enumerate(self.image_source.ids)}
        self.thumbnails: dict[int, bytes] = {}
        self.answers: list[Answer] = []
        self.skipped: set[int] = set()
        self.queue: list[int] = []
        self.fitted: dict | None = None
        self._add_to_queue(self.budget - len(self.labels))  # a second run goes on to the same budget

    # --- what to ask ---------------------------------------------------------------------------------------------

    def labeled_mask(self) -> np.ndarray:
        return np.array([path in self.labels for path in self.paths])

    def _add_to_queue(self, n: int) -> None:
        """`n` more rows to ask: clusters no label covers first (suggest), then, once a head is
        fitted, the rows it is least sure about."""
        if n <= 0:
            return
        asked = set(self.queue)
        labeled = self.labeled_mask() | np.isin(np.arange(len(self.paths)), list(asked))
        chosen, _ = suggest_rows(self.features, n, labeled, self.seed, classes=len(self.classes))
        uncovered = [s.row for s in chosen if s.uncovered]
        rows = uncovered + ([] if self.fitted is None else self._least_sure(labeled))
        rows += [s.row for s in chosen]
        added = list(dict.fromkeys(r for r in rows if r not in asked and not labeled[r]))[:n]
        self.queue += added

    def _least_sure(self, taken: np.ndarray) -> list[int]:
        from diffclass_cli.heads.apply import load_any_head

        proba = load_any_head(self.out).predict_proba(self.features)
        top_two = np.sort(proba, axis=1)[:, -2:]
        margin = top_two[:, 1] - top_two[:, 0]
        return [int(r) for r in np.argsort(margin, kind="stable") if not taken[r]]

    def pending(self) -> list[int]:
        return [r for r in self.queue if self.paths[r] not in self.labels and r not in self.skipped]

    # --- answers ------------------------------------------------------------------------------------------------

    def label(self, row: int, name: str) -> None:
        name = " ".join(str(name).split())
        if not name or len(name) > MAX_LABEL:
            raise DiffclassError(f"a class name has 1 to {MAX_LABEL} characters")
        self._check_row(row)
        path = self.paths[row]
        self.answers.append(Answer(row, self.labels.get(path)))
        self.labels[path] = name
        self.skipped.discard(row)
        self.save()

    def skip(self, row: int) -> None:
        self._check_row(row)
        self.answers.append(Answer(row, self.labels.get(self.paths[row]), skipped=True))
        self.skipped.add(row)

    def undo(self) -> int | None:
        """Take the last answer back; returns its row (None when there is none)."""
        if not self.answers:
            return None
        answer = self.answers.pop()
        path = self.paths[answer.row]
        if answer.skipped:
            self.skipped.discard(answer.row)
            return answer.row
        if answer.before is None:
            self.labels.pop(path, None)
        else:
            self.labels[path] = answer.before
        self.save()
        return answer.row

    def _check_row(self, row: int) -> None:
        if not isinstance(row, int) or isinstance(row, bool) or not 0 <= row < len(self.paths):
            raise DiffclassError(f"no image {row!r} in this pool")

    def save(self) -> None:
        """The labels table, whole, written atomically: what `fit --labels` reads."""
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["path", "label"])
        writer.writerows([spreadsheet_safe(p), spreadsheet_safe(label)] for p, label in sorted(self.labels.items()))
        with atomic_output(self.labels_path, overwrite=True, inputs=[self.pool]) as tmp:
            Path(tmp).write_text(text.getvalue(), encoding="utf-8", errors="surrogateescape")

    # --- checking and fitting ---------------------------------------------------------------------------------

    def class_counts(self) -> dict[str, int]:
        names = sorted(set(self.labels.values()) | set(self.classes))
        return {name: sum(label == name for label in self.labels.values()) for name in names}

    def check(self) -> list[dict]:
        """Every labeled image, the ones that look like another class first (fit's check), each with
        a few labeled images of the class it resembles."""
        rows = [self.row_of[p] for p in self.labels]
        names = sorted(set(self.labels.values()))
        targets = np.full(len(self.paths), UNLABELED)
        targets[rows] = [names.index(self.labels[self.paths[r]]) for r in rows]
        flagged = {}
        if len(names) >= 2:
            flagged = {f["row"]: f for f in suspicious_labels(self.features, targets)}
        listed = []
        for row in sorted(rows, key=lambda r: (r not in flagged, -flagged.get(r, {"score": 0})["score"], r)):
            item = {"row": row, "path": self.paths[row], "label": self.labels[self.paths[row]], "flagged": False}
            if row in flagged:
                looks_like = names[flagged[row]["looks_like"]]
                examples = [r for r in rows if self.labels[self.paths[r]] == looks_like]
                item |= {"flagged": True, "looks_like": looks_like, "score": round(flagged[row]["score"], 3),
                         "examples": examples[:LOOKS_LIKE_EXAMPLES]}
            listed.append(item)
        return listed

    def fit(self) -> dict:
        """Fit the default head on the labels table and save it to `out`; what auto chose."""
        from diffclass_cli.heads.fit import fit_head

        if self.out is None:
            raise DiffclassError("no --out was given: the labels are saved; fit them with `diffclass fit "
                                 f"{self.pool} --labels {self.labels_path} --out head.skops`")
        if len(set(self.labels.values())) < 2:
            raise DiffclassError("fitting needs labeled images of at least 2 classes")
        self.save()
        info = fit_head(self.pool, self.out, labels=self.labels_path, overwrite=True)
        params = info["params"]
        self.fitted = {"head": params.get("choice", info["head"]), "reason": params.get("reason", ""),
                       "classes": info["class_names"], "labeled": info["fitted_on"]["labeled_rows"],
                       "out": str(self.out)}
        return self.fitted

    def more(self, n: int) -> None:
        self._add_to_queue(max(1, min(int(n), len(self.paths))))

    # --- what the page shows -----------------------------------------------------------------------------------

    def state(self) -> dict:
        pending = self.pending()
        return {"pending": [{"row": r, "alt": self.paths[r]} for r in pending],
                "labeled": len(self.labels), "budget": self.budget, "asked": len(self.queue),
                "classes": self.class_counts(), "fitted": self.fitted, "can_undo": bool(self.answers),
                "labels_table": str(self.labels_path)}

    def thumbnail(self, row: int) -> bytes:
        """Image `row` of the pool as a PNG, made once."""
        self._check_row(row)
        if row not in self.thumbnails:
            where = self.image_row.get(self.paths[row])
            if where is None:
                raise DiffclassError(f"{self.paths[row]} is not in {self.image_source.spec}")
            try:
                image = to_mode(self.image_source.load(where), "RGB")
            except UnreadableImage as err:
                raise DiffclassError(f"cannot read {self.paths[row]}: {err}") from None
            scale = SHOWN_SIDE / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, 0 if scale > 2 else 2)  # small images enlarged pixel by pixel
            stream = io.BytesIO()
            image.save(stream, format="PNG")
            self.thumbnails[row] = stream.getvalue()
        return self.thumbnails[row]
