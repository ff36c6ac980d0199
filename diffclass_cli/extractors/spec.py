"""What an exported extractor computes beyond the backbone's weights, as plain data: the
options `export` and `benchmark` take. No torch here, so the command line can import it."""

from dataclasses import dataclass

from diffclass_cli.errors import DiffclassError

DEFAULT_TIMESTEPS = (200,)
DEFAULT_POOL = 3  # 3x3 beat 2x2 at 1 label per class on validation (see the model card)


def parse_pool(text: str) -> int:
    """`global` -> 1, `RxR` (or `R`) -> R: the side of the grid of averages per block."""
    if text == "global":
        return 1
    side, _, other = text.lower().partition("x")
    if not side.isdecimal() or (other and other != side) or int(side) < 1:
        raise DiffclassError(f"--pool is 'global' or a square grid like '2x2', not {text!r}")
    return int(side)


def pool_name(grid: int) -> str:
    return "global" if grid == 1 else f"{grid}x{grid}"


# `--shifts N` averages the features of the image moved by the first N of these (dy, dx):
# itself, then its four neighbours one pixel away, then the four diagonal ones.
SHIFT_OFFSETS = ((0, 0), (0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))

TIMESTEP_PREFIX = "t"


def timesteps_name(timesteps: tuple[int, ...]) -> str:
    """`t100`, `t10+100`: how timesteps are named in feature groups and benchmark tables."""
    return TIMESTEP_PREFIX + "+".join(map(str, timesteps))


@dataclass(frozen=True)
class ExtractorSpec:
    """What the extractor computes, beyond the backbone's own weights."""

    timesteps: tuple[int, ...] = ()  # empty: DEFAULT_TIMESTEPS (diffusion backbones only)
    taps: tuple[str, ...] = ()  # tap names or groups (`encoder`, `decoder`, `all`); empty: `default`
    pool: int = DEFAULT_POOL
    noise_seed: int = 0
    noise_draws: int = 1
    shifts: int = 1  # the first `shifts` of SHIFT_OFFSETS, features averaged over them

    def __post_init__(self):
        if not 1 <= self.shifts <= len(SHIFT_OFFSETS):
            raise DiffclassError(f"--shifts must be between 1 and {len(SHIFT_OFFSETS)}, not {self.shifts}")

    @classmethod
    def from_options(cls, *, timestep: int | None = None, timesteps: tuple[int, ...] = (), taps: str | None = None,
                     pool: str | None = None, noise_seed: int = 0, noise_draws: int = 1,
                     shifts: int = 1) -> "ExtractorSpec":
        """From the extractor options of `export` and `benchmark` (`taps` and `pool` as typed;
        None: the default)."""
        if timestep is not None and timesteps:
            raise DiffclassError("give --timestep or --timesteps, not both")
        return cls(timesteps=timesteps or (() if timestep is None else (timestep,)),
                   taps=tuple(t.strip() for t in (taps or "").split(",") if t.strip()),
                   pool=DEFAULT_POOL if pool is None else parse_pool(pool), noise_seed=noise_seed,
                   noise_draws=noise_draws, shifts=shifts)

    @property
    def shift_offsets(self) -> tuple[tuple[int, int], ...]:
        return SHIFT_OFFSETS[:self.shifts]

    @property
    def diffusion_timesteps(self) -> tuple[int, ...]:
        return self.timesteps or DEFAULT_TIMESTEPS
