"""Markdown table from a benchmarks/train_step.py --out JSON file.

python benchmarks/report.py docs/benchmarks/cpu.json
"""

import json
import sys
from pathlib import Path


def main(path: str) -> None:
    data = json.loads(Path(path).read_text())
    print(
        f"Machine: {data['machine']}. Matmul peak measured in the same run: "
        f"fp32 {data['matmul_peak_fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {data['matmul_peak_bf16'] / 1e9:.0f} GFLOP/s.\n"
    )
    print(
        "| preset | T | batch | implementation | precision | images/s | step (ms) | "
        "augment (ms) | peak memory (GB) | of matmul peak | vs snntorch | vs SpikingJelly |"
    )
    print("|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in data["rows"]:
        mem = r.get("cuda_peak_gb", r["peak_rss_gb"])
        x_snn = f"{r['x_snntorch']:.2f}x" if r.get("x_snntorch") else "-"
        x_sj = f"{r['x_spikingjelly']:.2f}x" if r.get("x_spikingjelly") else "-"
        print(
            f"| {r['preset']} | {r['T']} | {r['batch']} | {r['impl']} | {r['precision']} | "
            f"{r['images_per_s']:.0f} | {1e3 * r['step_s']:.1f} | {1e3 * r['augment_s']:.1f} | "
            f"{mem:.2f} | {100 * r['fraction_of_peak']:.0f}% | {x_snn} | {x_sj} |"
        )


if __name__ == "__main__":
    main(sys.argv[1])
