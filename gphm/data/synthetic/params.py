"""Parameters of the synthetic head: identity shape, appearance and expression.

Every parameter is a named dataclass field. Shape and expression fields are
dimensionless: shape fields are sampled in [-1, 1] (0 = the mean head), expression
fields are activations in [0, 1] (0 = neutral). Appearance holds colours as RGB albedo
triples in [0, 1] (display values: the renderer applies no gamma curve) and a few
scalars. Sampling draws from a caller-supplied
``numpy.random.Generator``, never from global state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "RGB",
    "ShapeParams",
    "AppearanceParams",
    "IdentityParams",
    "ExpressionParams",
    "EXPRESSIONS",
    "EXPRESSION_NAMES",
    "sample_identity",
]

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class ShapeParams:
    """Identity shape, each in [-1, 1]; 0 is the mean head. See ``deform.identity_vertices``."""

    head_width: float = 0.0  # whole head wider (+) / narrower (-)
    head_length: float = 0.0  # back of the skull longer
    head_height: float = 0.0  # cranium taller above the brows
    jaw_width: float = 0.0  # lower face and jaw angles wider
    chin_length: float = 0.0  # chin further down (longer lower face)
    chin_projection: float = 0.0  # chin sticks out more
    nose_length: float = 0.0  # nose tip lower
    nose_width: float = 0.0  # wider nose (alae and bridge)
    nose_projection: float = 0.0  # nose sticks out more
    eye_spacing: float = 0.0  # eyes further apart
    eye_size: float = 0.0  # larger eye openings
    ear_size: float = 0.0  # larger ears
    lip_thickness: float = 0.0  # fuller lips
    mouth_width: float = 0.0  # wider mouth
    cheek_fullness: float = 0.0  # rounder cheeks and cheekbones
    brow_ridge: float = 0.0  # heavier brow ridge
    hair_volume: float = 0.0  # thicker hair layer


@dataclass(frozen=True)
class AppearanceParams:
    """Identity colours (RGB albedo in [0, 1]) and colour-region scalars."""

    skin: RGB = (0.82, 0.64, 0.53)
    hair: RGB = (0.2, 0.13, 0.08)
    iris: RGB = (0.33, 0.2, 0.1)
    lips: RGB = (0.7, 0.36, 0.36)
    hairline: float = 0.0  # in [-1, 1]: forehead hairline lower (-) / higher, receding (+)
    brow_thickness: float = 0.5  # in [0, 1]


@dataclass(frozen=True)
class IdentityParams:
    """Everything that makes one synthetic subject."""

    shape: ShapeParams = field(default_factory=ShapeParams)
    appearance: AppearanceParams = field(default_factory=AppearanceParams)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ExpressionParams:
    """Expression activations in [0, 1]; 0 everywhere is the neutral face.

    ``_l`` / ``_r`` are the subject's left (+x) / right (−x) side.
    """

    jaw_open: float = 0.0  # jaw rotates open, showing teeth and the dark mouth
    smile_l: float = 0.0  # left mouth corner up and out, cheek raised
    smile_r: float = 0.0
    brow_raise: float = 0.0  # brows and forehead up, forehead wrinkles
    frown: float = 0.0  # brows down and together, glabella lines, mouth corners down
    blink_l: float = 0.0  # left upper eyelid closes
    blink_r: float = 0.0
    pucker: float = 0.0  # lips forward and narrow
    cheek_puff: float = 0.0  # cheeks blown out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: Named expressions of the synthetic set, neutral first. The order decides which labels
#: a set with ``num_expressions = E`` uses (the first E): it is chosen so that small sets
#: still cover the mouth, both mouth sides, brows, eyes, lips and cheeks.
EXPRESSIONS: dict[str, ExpressionParams] = {
    "neutral": ExpressionParams(),
    "jaw_open": ExpressionParams(jaw_open=1.0),
    "smile_l": ExpressionParams(smile_l=1.0),
    "smile_r": ExpressionParams(smile_r=1.0),
    "brow_raise": ExpressionParams(brow_raise=1.0),
    "blink_l": ExpressionParams(blink_l=1.0),
    "pucker": ExpressionParams(pucker=1.0),
    "cheek_puff": ExpressionParams(cheek_puff=1.0),
    "frown": ExpressionParams(frown=1.0),
    "blink_r": ExpressionParams(blink_r=1.0),
    "smile": ExpressionParams(smile_l=1.0, smile_r=1.0),
    "surprise": ExpressionParams(jaw_open=0.6, brow_raise=1.0),
}
EXPRESSION_NAMES: tuple[str, ...] = tuple(EXPRESSIONS)

# Palettes the appearance is sampled around (RGB albedo).
_SKIN_LIGHT: RGB = (0.9, 0.74, 0.64)
_SKIN_DARK: RGB = (0.36, 0.23, 0.16)
_HAIR = (
    (0.06, 0.05, 0.05),  # black
    (0.18, 0.11, 0.07),  # dark brown
    (0.35, 0.22, 0.12),  # brown
    (0.72, 0.58, 0.36),  # blond
    (0.55, 0.24, 0.1),  # auburn
    (0.6, 0.6, 0.6),  # grey
)
_IRIS = (
    (0.3, 0.17, 0.08),  # brown
    (0.2, 0.12, 0.06),  # dark brown
    (0.25, 0.45, 0.65),  # blue
    (0.3, 0.48, 0.3),  # green
    (0.45, 0.38, 0.2),  # hazel
    (0.45, 0.5, 0.55),  # grey
)


def _jitter(rng: np.random.Generator, rgb: RGB, amount: float) -> RGB:
    """Vary brightness by ±amount and each channel by ±amount/4 (keeps the hue)."""
    gain = 1.0 + amount * rng.uniform(-1.0, 1.0) + 0.25 * amount * rng.uniform(-1.0, 1.0, 3)
    out = np.clip(np.asarray(rgb) * gain, 0.0, 1.0)
    return (float(out[0]), float(out[1]), float(out[2]))


def sample_identity(rng: np.random.Generator) -> IdentityParams:
    """Draw one subject. Shape values are N(0, 0.5²) clipped to [-1, 1]."""
    names = [f.name for f in dataclasses.fields(ShapeParams)]
    values = np.clip(rng.normal(0.0, 0.5, len(names)), -1.0, 1.0)
    shape = ShapeParams(**{n: float(v) for n, v in zip(names, values)})

    tone = float(rng.uniform(0.0, 1.0))  # 0 = lightest, 1 = darkest palette entry
    skin = tuple(float(a + (b - a) * tone) for a, b in zip(_SKIN_LIGHT, _SKIN_DARK))
    skin = _jitter(rng, skin, 0.06)  # type: ignore[arg-type]
    hair = _jitter(rng, _HAIR[int(rng.integers(len(_HAIR)))], 0.1)
    iris = _jitter(rng, _IRIS[int(rng.integers(len(_IRIS)))], 0.1)
    # Lips: a darker, redder version of the skin, more or less saturated.
    redness = float(rng.uniform(0.55, 0.85))
    lips = (skin[0] * 0.88, skin[1] * redness * 0.72, skin[2] * redness * 0.8)
    appearance = AppearanceParams(
        skin=skin,  # type: ignore[arg-type]
        hair=hair,
        iris=iris,
        lips=tuple(float(c) for c in lips),  # type: ignore[arg-type]
        hairline=float(np.clip(rng.normal(0.0, 0.5), -1.0, 1.0)),
        brow_thickness=float(rng.uniform(0.2, 1.0)),
    )
    return IdentityParams(shape=shape, appearance=appearance)
