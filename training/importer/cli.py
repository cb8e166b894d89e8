"""`python -m training import`: exit 0 on success, 2 on an error, 3 when parity refuses to publish."""
from __future__ import annotations

import argparse
import sys

from contract.folder import ModelDirError

from modelops.cli import options_from_args
from ..export.options import DEFAULT_FP16_TOLERANCE, DEFAULT_TOLERANCE, ExportError, ParityError
from .publish import ImportOptions, import_weights

DESCRIPTION = """\
Serve a generator you already have: read a checkpoint (weights only: a file carrying code is refused),
detect its architecture and hyper-parameters from the weights, export it to ONNX (TorchScript exporter),
check the graph at a second, non-square size (a graph frozen at its traced size is refused) and against
torch (max abs <= --tolerance on random inputs in its value range, two sizes, batch 1 and 2), and publish
it atomically as OUT/NAME with a card: endpoint `upscale` for a scale above 1, else `translate`; the
graph's true size constraint, a tiling hint, an fp16 variant, and provenance (file names and sha256,
detected arch and parameters, licence, importer versions). Nothing is written under OUT when the
weights cannot be read or recognised; a later failure leaves only OUT/.NAME.lock, as `export` does.

Two files of the CycleGAN layout (latest_net_G_A.pth latest_net_G_B.pth) make one model with the
directions a2b (G_A) and b2a (G_B); one file makes a one-direction model.

Accepted: .pth .pt .ckpt .safetensors (params_ema / params / state_dict / model wrappers, module. and
netG. prefixes); junyanz pix2pix/CycleGAN generators (resnet_6/9blocks, unet_128/256) and the
upscalers and restorers spandrel reads (ESRGAN/Real-ESRGAN, Compact, SPAN, SwinIR, DAT, OmniSR, PLKSR,
RealCUGAN, ...), plus BasicSR's MSRResNet and EDSR.

junyanz models are exported in eval mode (running statistics); their test.py without --eval normalises
each image by its own statistics: --batch-stats exports that mode instead. The weights' licence is yours
to state (--license); the card says "unknown" otherwise.

Exit status: 0 published, 2 error (nothing published), 3 parity over the tolerance (nothing published).
"""


def known_archs() -> str:
    try:
        from .detect import KNOWN_ARCHS
    except ImportError:  # detect.py missing: the error comes when it is needed
        return ""
    return f" (one of: {', '.join(sorted(KNOWN_ARCHS))})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training import", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="the weights (a .pth, .pt, .ckpt or .safetensors file)")
    p.add_argument("file_b", metavar="FILE_B", nargs="?",
                   help="the second generator of a CycleGAN pair (G_B: FILE is G_A)")
    p.add_argument("--name", required=True, help="model name (folder under --out; ^[a-z0-9][a-z0-9._-]{0,63}$)")
    p.add_argument("--out", default="models", help="the models folder (default: models)")
    p.add_argument("--arch", help="the architecture, where the weights alone are ambiguous" + known_archs())
    p.add_argument("--license", help="the weights' licence, as you state it (default: the card says \"unknown\")")
    p.add_argument("--batch-stats", action="store_true",
                   help="junyanz generators: normalise by each image's own statistics, as their test.py "
                        "without --eval does (default: eval mode, running statistics)")
    p.add_argument("--default", action="store_true",
                   help="card `default: true`: served when a request to its endpoint names no model")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True,
                   help="also write <role>.fp16.onnx for the CUDA provider (default: on, unless the arch is "
                        "not safe in fp16)")
    p.add_argument("--fp16-tolerance", type=float, default=DEFAULT_FP16_TOLERANCE,
                   help="max abs fp16-vs-fp32 error allowed for the fp16 variant (default: 0.02)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="max abs torch-vs-onnxruntime error allowed (default: 1e-4)")
    p.add_argument("--description", help="one line for the card (default: the arch and the file names)")
    p.add_argument("--optimize", action=argparse.BooleanOptionalAction, default=True,
                   help="apply the measured exact rewrites for onnxruntime CPU (default: on)")
    return p


def main(argv: list[str] | None = None) -> int:
    options = options_from_args(ImportOptions, build_parser().parse_args(argv))
    try:
        import_weights(options)
        return 0
    except ParityError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 3
    except (ExportError, ModelDirError, ValueError, OSError) as e:  # ImportFailed is a ValueError
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


MAX_LINE = 1000  # a loader's error can list every mismatching tensor: the first ones say enough


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= MAX_LINE else text[:MAX_LINE] + " ..."
