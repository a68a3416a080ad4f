"""Put training data into the local test directory's `train` channel.

    python local_test/prepare_data.py                       # synthetic panel (no network)
    python local_test/prepare_data.py --stallion-path F     # the Stallion file you have
    python local_test/prepare_data.py --source stallion     # Stallion via pytorch-forecasting's
                                                            # downloader (needs the internet)

Writes `data.parquet` and a `tft_config.json` naming the matching preset into the channel
directory, and says which data it used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "code"))

from tft_sagemaker.synthetic import make_panel  # noqa: E402

DEFAULT_OUTPUT = HERE / "test_dir" / "input" / "data" / "train"
OURS = {"data.parquet", "tft_config.json"}


def load_stallion(path: Path | None) -> pd.DataFrame:
    if path is not None:
        return pd.read_parquet(path) if path.suffix != ".csv" else pd.read_csv(path)
    from pytorch_forecasting.data.examples import get_stallion_data

    return get_stallion_data()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        choices=("auto", "synthetic", "stallion"),
        default="auto",
        help="auto: Stallion if --stallion-path is given, else synthetic",
    )
    parser.add_argument("--stallion-path", type=Path, help="a local copy of the Stallion data")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="channel directory")
    parser.add_argument("--series", type=int, default=30, help="synthetic: stores (x 10 products)")
    parser.add_argument("--weeks", type=int, default=104, help="synthetic: weeks per series")
    args = parser.parse_args(argv)

    source = args.source
    if source == "auto":
        source = "stallion" if args.stallion_path else "synthetic"
    if args.output.exists():
        foreign = sorted(p.name for p in args.output.iterdir() if p.name not in OURS)
        if foreign:
            parser.error(
                f"{args.output} holds other files ({', '.join(foreign[:5])}); "
                "choose an empty --output directory"
            )
    args.output.mkdir(parents=True, exist_ok=True)

    if source == "stallion":
        frame = load_stallion(args.stallion_path)
        origin = args.stallion_path or "pytorch-forecasting's downloader"
    else:
        frame = make_panel(n_stores=args.series, n_weeks=args.weeks)
        origin = f"the built-in generator ({args.series} stores x 10 products, {args.weeks} weeks)"
    frame.to_parquet(args.output / "data.parquet", index=False)
    (args.output / "tft_config.json").write_text(json.dumps({"preset": source}, indent=2) + "\n")
    print(f"prepared {source} data from {origin}: {len(frame)} rows -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
