"""`manifold-ext demo attack`: adversarial attacks against manifold-aware classifiers, four experiments.

1. ``table1``: paper 000 Table 1 (§3.2): Patch-PGD / Patch-NAG collapse a
   convolutional VAE-classifier, ELBO purification (Eq. 22) restores it; with an
   attack-strength study (accuracy vs iterations, patch size and placement).
2. ``gmm_patch``: the same patch attacks against the GMM classifier of thesis 004
   ch. 4, defended by rejection (§4.6) and reclassification (§4.7).
3. ``gmm_whitebox``: the threshold-aware white-box attacks of thesis 004
   §4.8.5-4.8.6 (Eq. 4.9 patch / unconstrained, Eq. 4.10 fooling images).
4. ``table41``: thesis 004 Table 4.1 and Fig. 4.3 on 10-class digits: accuracy,
   error and rejection without and with thresholds, reclassification of the
   rejected clean images, FGSM eps sweep.

``--no-gmm`` skips 2-4, ``--no-whitebox`` 3, ``--no-table41`` 4. Every section
writes its figures to ``--out``; ``summary.json`` holds each section's numbers and
the ``paper_comparison`` rows (``000-table1-*``, ``004-table41-*``, ``004-fig43-*``).
"""

from __future__ import annotations

import argparse
import time

import torch

from manifold_ext.attacks import patch_mask
from manifold_ext.demos.attack import gmm_patch, gmm_whitebox, table1, table41
from manifold_ext.demos.common import (
    add_common_arguments,
    run_record,
    seed_everything,
    validate_paper_comparison,
    write_json,
)

NAME = "attack"
DESCRIPTION = (
    "Table 1: Patch-PGD / Patch-NAG on a conv VAE-classifier and ELBO test-time purification; "
    "GMM classifier with rejection and reclassification, Table 4.1 and Fig. 4.3 (thesis 004 ch. 4)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, NAME)
    table1.add_arguments(parser)
    gmm_patch.add_arguments(parser)
    gmm_whitebox.add_arguments(parser)
    table41.add_arguments(parser)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default 1 on CPU: the models are tiny and one thread is fastest)",
    )


def run(args: argparse.Namespace) -> dict:
    started = time.time()
    device = torch.device(args.device)
    if args.threads is not None or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    seed_everything(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, str] = {}

    split = table1.load_split(args)
    section, rows, reuse = table1.run_table1(args, split, device, figures)
    summary = {"demo": NAME, "device": str(device), **section}
    if not args.no_gmm:
        if split.name != "digits-binary":
            summary["gmm_classifier"] = {"skipped": "the GMM-classifier sections run on the 8x8 digits only"}
        else:
            mask = patch_mask(split.image_shape[-2:], *args.gmm_patch, device=device)
            gmm, model = gmm_patch.run_gmm_patch(
                args,
                split,
                reuse["x_test"],
                reuse["y_test"],
                mask,
                reuse["attack_step"],
                reuse["attack_steps"],
                device,
                figures,
            )
            gmm["patch"] = {
                "top": args.gmm_patch[0],
                "left": args.gmm_patch[1],
                "height": args.gmm_patch[2],
                "width": args.gmm_patch[3],
            }
            if not args.no_whitebox:
                gmm["whitebox"] = gmm_whitebox.run_gmm_whitebox(
                    args, model, split, reuse["x_test"], reuse["y_test"], mask, figures
                )
            summary["gmm_classifier"] = gmm
        if not args.no_table41:
            summary["table41"], table41_rows = table41.run_table41(args, device, figures)
            rows += table41_rows
    validate_paper_comparison(rows)
    summary["paper_comparison"] = rows
    summary["figures"] = figures
    summary["run"] = run_record(started)
    write_json(args.out / "summary.json", summary)
    return summary
