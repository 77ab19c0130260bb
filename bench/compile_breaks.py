"""Where torch.compile breaks the training forward's graph (caption loss + L_map), measured with torch._dynamo.explain.

`torch.compile(model, fullgraph=True)` needs one graph; every break is listed with the line and Dynamo's reason, and
the image-feature forward (what retrieval and zero-shot classification run) is checked to compile as one graph.

    python -m bench.compile_breaks [--kind llama|t5] [--json out.json]
"""

import argparse
import collections
import time

import torch

from bench.common import batch, vlap_model, write_report


def breaks(function, **inputs) -> dict:
    """Graph and break counts of `function(**inputs)`, and the breaks grouped by (file:line, first line of reason)."""
    torch._dynamo.reset()
    start = time.perf_counter()
    explained = torch._dynamo.explain(function)(**inputs)
    where = collections.Counter()
    for reason in explained.break_reasons:
        frame = reason.user_stack[-1] if reason.user_stack else None
        line = f"{frame.filename.split('/')[-1]}:{frame.lineno}" if frame else "?"
        where[f"{line}: {str(reason.reason).splitlines()[0].strip()[:120]}"] += 1
    return {
        "graphs": explained.graph_count,
        "graph_breaks": explained.graph_break_count,
        "explain_seconds": round(time.perf_counter() - start, 1),
        "breaks": dict(where.most_common()),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["llama", "t5"], default="llama")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    model = vlap_model(args.kind)
    inputs = batch(4)
    results = {
        "kind": args.kind,
        "training_forward": breaks(model, **inputs),
        "image_features": breaks(model.get_image_features, pixel_values=inputs["pixel_values"]),
    }
    for name in ("training_forward", "image_features"):
        part = results[name]
        print(f"{name}: {part['graphs']} graph(s), {part['graph_breaks']} break(s)")
        for where, count in part["breaks"].items():
            print(f"  {count} x {where}")
    write_report(results, args.json)


if __name__ == "__main__":
    main()
