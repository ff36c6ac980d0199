"""An int8 candidate of an extractor: onnxruntime's static quantization (QOperator format,
per-channel int8 weights, uint8 activations) calibrated on unlabeled images of a source, with
the extractor's metadata kept, for benchmarks/extractor_speed.py to measure beside the float
file. Not a shipped path: whether int8 is faster depends on the CPU (VNNI), so it is measured.

    python benchmarks/quantize_extractor.py exports/mnist-sample-ddpm.onnx int8.onnx \
        [--calibrate-on mnist-sample:train] [--images 256]
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from diffclass_cli.data.loading import to_array, to_unit_range
from diffclass_cli.data.sources import open_source
from diffclass_cli.extractor_format import INPUT_NAME, read_metadata


class Batches(CalibrationDataReader):
    def __init__(self, images: np.ndarray, batch_size: int = 32):
        self.batches = iter([{INPUT_NAME: images[i:i + batch_size]} for i in range(0, len(images), batch_size)])

    def get_next(self):
        return next(self.batches, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--calibrate-on", default="mnist-sample:train")
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    meta = read_metadata(args.model)
    source = open_source(args.calibrate_on)
    rows = np.random.default_rng(0).choice(len(source), min(args.images, len(source)), replace=False)
    images = to_unit_range(np.stack([to_array(source.load(int(r)), meta["image_size"], meta["channels"])
                                     for r in rows]))
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(args.model), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(args.out), Batches(images), quant_format=QuantFormat.QOperator,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    model = onnx.load(str(args.out))
    kept = [p for p in model.metadata_props if not p.key.startswith("onnx.")]  # the quantizer's own notes
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(args.out))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB), calibrated on {len(rows)} images of "
          f"{args.calibrate_on}")


if __name__ == "__main__":
    main()
