"""Write the catalogue's model cards (``models/catalogue/``) for the chat models in the AlpacaEval data.

Why a generator rather than hand-written files: about fifty cards share one energy method and one source of
names, so a table here (name, the data's generator names, active parameters, family, where the size is
published) and one function that applies the method keep them consistent; ``python -m
router.training.catalogue`` rewrites them. Cards written by hand (the hosted models of the RouteLLM data) sit in
the same folder and are left alone.

Energy, the method of the existing hosted cards (``models/catalogue/llama-3-70b-instruct.yaml``): ~2 FLOPs per
active parameter per token; NVIDIA H100 SXM at 989e12 dense BF16 FLOP/s and 700 W = 1.41e12 FLOP/J at peak;
10 % of peak while decoding (1.41e11 FLOP/J), 40 % for prefill (5.65e11 FLOP/J); datacenter PUE 1.2. So per
output token 2 N / 1.41e11 x 1.2 J and per input token 2 N / 5.65e11 x 1.2 J for N active parameters.

Models whose size was never published (Claude, GPT-3.5, JinaChat) get ``simulation_only: true`` and the
order-of-magnitude figure of ``models/examples/remote-large.yaml`` (Epoch AI 2025, ~3 J per output token for a
GPT-4-class query), which says it is a placeholder.

``benchmarks.alpaca_eval_lc`` is the model's published length-controlled win rate on the AlpacaEval leaderboard
(``weighted_alpaca_eval_gpt4_turbo_leaderboard.csv`` of the shared data, /100): a public score a user can look up
for a new model. It is computed on all 805 AlpacaEval instructions, which include the ones this project
evaluates on, so evaluations of the prior leave it out unless they say otherwise.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from .common import MODELS_DIR, PROJECT_ROOT

CATALOGUE_DIR = MODELS_DIR / "catalogue"
LEADERBOARD = PROJECT_ROOT / "data" / "alpaca_eval" / "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"
FLOP_PER_J_DECODE = 1.41e11
FLOP_PER_J_PREFILL = 5.65e11
PUE = 1.2
PLACEHOLDER_OUT_J, PLACEHOLDER_IN_J = 3.0, 0.3

LLAMA1 = "Touvron et al., 'LLaMA: Open and Efficient Foundation Language Models', arXiv:2302.13971 (2023)"
LLAMA2 = "Touvron et al., 'Llama 2: Open Foundation and Fine-Tuned Chat Models', arXiv:2307.09288 (2023)"
FALCON = "Almazrouei et al., 'The Falcon Series of Open Language Models', arXiv:2311.16867 (2023)"
PYTHIA = "Biderman et al., 'Pythia', arXiv:2304.01373 (2023): 11.8B parameters for Pythia-12B"
FUSECHAT = "Yang et al., 'FuseChat-3.0', arXiv:2503.04222 (2025); base model sizes from their model cards"
GPT3 = "Brown et al., 'Language Models are Few-Shot Learners', arXiv:2005.14165 (2020): davinci = 175B"


@dataclass(frozen=True)
class Entry:
    name: str
    generator: str
    """The AlpacaEval ``generator_2`` name (an alias on the card)."""
    params_b: float | None
    """Active parameters per token in billions; None where never published."""
    family: str
    tier: str
    context: int
    source: str
    size_citation: str
    license: str
    aliases: tuple[str, ...] = ()


ENTRIES: tuple[Entry, ...] = (
    Entry("fusechat-llama-3.2-1b", "FuseChat-Llama-3.2-1B-Instruct", 1.24, "llama-3", "small", 131072,
          "FuseAI/FuseChat-Llama-3.2-1B-Instruct", FUSECHAT + " (Llama 3.2 1B: 1.24B)", "Llama 3.2 Community License"),
    Entry("fusechat-llama-3.2-3b", "FuseChat-Llama-3.2-3B-Instruct", 3.21, "llama-3", "small", 131072,
          "FuseAI/FuseChat-Llama-3.2-3B-Instruct", FUSECHAT + " (Llama 3.2 3B: 3.21B)", "Llama 3.2 Community License"),
    Entry("fusechat-qwen-2.5-7b", "FuseChat-Qwen-2.5-7B-Instruct", 7.62, "qwen-2", "small", 32768,
          "FuseAI/FuseChat-Qwen-2.5-7B-Instruct", FUSECHAT + " (Qwen2.5 7B: 7.62B)", "Apache-2.0"),
    Entry("fusechat-llama-3.1-8b", "FuseChat-Llama-3.1-8B-Instruct", 8.03, "llama-3", "small", 131072,
          "FuseAI/FuseChat-Llama-3.1-8B-Instruct", FUSECHAT + " (Llama 3.1 8B: 8.03B)", "Llama 3.1 Community License"),
    Entry("fusechat-gemma-2-9b", "FuseChat-Gemma-2-9B-Instruct", 9.24, "gemma-2", "small", 8192,
          "FuseAI/FuseChat-Gemma-2-9B-Instruct", FUSECHAT + " (Gemma 2 9B: 9.24B)", "Gemma Terms of Use"),
    Entry("openhermes-2.5-mistral-7b", "OpenHermes-2.5-Mistral-7B", 7.24, "mistral", "small", 32768,
          "teknium/OpenHermes-2.5-Mistral-7B", "Jiang et al., 'Mistral 7B', arXiv:2310.06825 (2023): 7.24B",
          "Apache-2.0"),
    Entry("qwen-14b-chat", "Qwen-14B-Chat", 14.2, "qwen-1", "large", 8192, "Qwen/Qwen-14B-Chat",
          "Bai et al., 'Qwen Technical Report', arXiv:2309.16609 (2023): 14B (14.2B in the released weights)",
          "Tongyi Qianwen License"),
    Entry("alpaca-7b", "alpaca-7b", 6.74, "llama-1", "small", 2048, "Stanford Alpaca 7B (LLaMA 7B fine-tune)",
          LLAMA1 + ": 6.7B", "CC BY-NC 4.0 (research only)"),
    Entry("alpaca-farm-ppo-human", "alpaca-farm-ppo-human", 6.74, "llama-1", "small", 2048,
          "AlpacaFarm PPO (human preferences), LLaMA 7B", LLAMA1 + ": 6.7B", "CC BY-NC 4.0 (research only)"),
    Entry("alpaca-farm-ppo-sim-gpt4-20k", "alpaca-farm-ppo-sim-gpt4-20k", 6.74, "llama-1", "small", 2048,
          "AlpacaFarm PPO (simulated GPT-4 preferences), LLaMA 7B", LLAMA1 + ": 6.7B", "CC BY-NC 4.0 (research only)"),
    Entry("baize-v2-13b", "baize-v2-13b", 13.0, "llama-1", "large", 2048, "project-baize/baize-v2-13b",
          LLAMA1 + ": 13.0B", "research only (LLaMA licence)"),
    Entry("chatglm2-6b", "chatglm2-6b", 6.24, "glm", "small", 32768, "THUDM/chatglm2-6b",
          "THUDM ChatGLM2-6B model card: 6.2B (GLM, Du et al., arXiv:2103.10360)", "ChatGLM2-6B licence"),
    Entry("falcon-40b-instruct", "falcon-40b-instruct", 41.8, "falcon", "large", 2048, "tiiuae/falcon-40b-instruct",
          FALCON + ": 41.8B", "Apache-2.0"),
    Entry("falcon-7b-instruct", "falcon-7b-instruct", 7.22, "falcon", "small", 2048, "tiiuae/falcon-7b-instruct",
          FALCON + ": 7.2B", "Apache-2.0"),
    Entry("gemma-2b-it", "gemma-2b-it", 2.51, "gemma-1", "small", 8192, "google/gemma-2b-it",
          "Gemma Team, 'Gemma: Open Models Based on Gemini Research', arXiv:2403.08295 (2024): 2.51B",
          "Gemma Terms of Use"),
    Entry("gemma-7b-it", "gemma-7b-it", 8.54, "gemma-1", "small", 8192, "google/gemma-7b-it",
          "Gemma Team, arXiv:2403.08295 (2024): 8.54B", "Gemma Terms of Use"),
    Entry("humpback-llama2-70b", "humpback-llama2-70b", 69.0, "llama-2", "large", 4096,
          "Li et al., 'Self-Alignment with Instruction Backtranslation' (Humpback), arXiv:2308.06259",
          LLAMA2 + ": 70B (69.0B)", "Llama 2 Community License"),
    Entry("minichat-3b", "minichat-3b", 3.02, "llama-2", "small", 4096, "GeneZC/MiniChat-3B",
          "Zhang et al., 'Towards the Law of Capacity Gap in Distilling Language Models', arXiv:2311.07052: 3.0B",
          "Apache-2.0"),
    Entry("minotaur-13b", "minotaur-13b", 13.0, "llama-1", "large", 2048, "openaccess-ai-collective/minotaur-13b-fixed",
          LLAMA1 + ": 13.0B", "research only (LLaMA licence)"),
    Entry("nous-hermes-13b", "nous-hermes-13b", 13.0, "llama-1", "large", 2048, "NousResearch/Nous-Hermes-13b",
          LLAMA1 + ": 13.0B", "research only (LLaMA licence)"),
    Entry("oasst-rlhf-llama-33b", "oasst-rlhf-llama-33b", 32.5, "llama-1", "large", 2048,
          "OpenAssistant RLHF, LLaMA 33B", LLAMA1 + ": 32.5B", "research only (LLaMA licence)"),
    Entry("oasst-sft-llama-33b", "oasst-sft-llama-33b", 32.5, "llama-1", "large", 2048,
          "OpenAssistant SFT, LLaMA 33B", LLAMA1 + ": 32.5B", "research only (LLaMA licence)"),
    Entry("oasst-sft-pythia-12b", "oasst-sft-pythia-12b", 11.8, "pythia", "large", 2048,
          "OpenAssistant/oasst-sft-4-pythia-12b-epoch-3.5", PYTHIA, "Apache-2.0"),
    Entry("pythia-12b-mix-sft", "pythia-12b-mix-sft", 11.8, "pythia", "large", 2048,
          "OpenAssistant/pythia-12b-sft-v8-7k-steps", PYTHIA, "Apache-2.0"),
    Entry("openbuddy-falcon-40b-v9", "openbuddy-falcon-40b-v9", 41.8, "falcon", "large", 2048,
          "OpenBuddy-Falcon-40B-v9", FALCON + ": 41.8B", "Apache-2.0"),
    Entry("openbuddy-llama-30b-v7.1", "openbuddy-llama-30b-v7.1", 32.5, "llama-1", "large", 2048,
          "OpenBuddy-LLaMA-30B-v7.1", LLAMA1 + ": 32.5B", "research only (LLaMA licence)"),
    Entry("openbuddy-llama2-13b-v11.1", "openbuddy-llama2-13b-v11.1", 13.0, "llama-2", "large", 4096,
          "OpenBuddy-LLaMA2-13B-v11.1", LLAMA2 + ": 13B", "Llama 2 Community License"),
    Entry("openbuddy-llama2-70b-v10.1", "openbuddy-llama2-70b-v10.1", 69.0, "llama-2", "large", 4096,
          "OpenBuddy-LLaMA2-70B-v10.1", LLAMA2 + ": 70B (69.0B)", "Llama 2 Community License"),
    Entry("phi-2", "phi-2", 2.78, "phi", "small", 2048, "microsoft/phi-2",
          "Microsoft Research, 'Phi-2: The surprising power of small language models' (2023): 2.7B", "MIT"),
    Entry("phi-2-sft", "phi-2-sft", 2.78, "phi", "small", 2048, "lxuechen/phi-2-sft",
          "Microsoft Research, Phi-2 (2023): 2.7B", "MIT"),
    Entry("ultralm-13b", "ultralm-13b", 13.0, "llama-1", "large", 2048, "UltraLM 13B (LLaMA 13B fine-tune)",
          LLAMA1 + ": 13.0B", "research only (LLaMA licence)"),
    Entry("vicuna-13b", "vicuna-13b", 13.0, "llama-1", "large", 2048, "lmsys Vicuna 13B (LLaMA 13B)",
          LLAMA1 + ": 13.0B", "research only (LLaMA licence)"),
    Entry("vicuna-13b-v1.5", "vicuna-13b-v1.5", 13.0, "llama-2", "large", 4096, "lmsys/vicuna-13b-v1.5",
          LLAMA2 + ": 13B", "Llama 2 Community License"),
    Entry("vicuna-7b", "vicuna-7b", 6.74, "llama-1", "small", 2048, "lmsys Vicuna 7B (LLaMA 7B)",
          LLAMA1 + ": 6.7B", "research only (LLaMA licence)"),
    Entry("vicuna-7b-v1.3", "vicuna-7b-v1.3", 6.74, "llama-1", "small", 2048, "lmsys/vicuna-7b-v1.3",
          LLAMA1 + ": 6.7B", "research only (LLaMA licence)"),
    Entry("vicuna-7b-v1.5", "vicuna-7b-v1.5", 6.74, "llama-2", "small", 4096, "lmsys/vicuna-7b-v1.5",
          LLAMA2 + ": 7B (6.74B)", "Llama 2 Community License"),
    Entry("wizardlm-13b", "wizardlm-13b", 13.0, "llama-1", "large", 2048, "WizardLM 13B (LLaMA 13B)",
          LLAMA1 + ": 13.0B", "research only (LLaMA licence)"),
    Entry("text-davinci-001", "text_davinci_001", 175.0, "gpt-3", "large", 2048, "OpenAI API text-davinci-001",
          GPT3 + " (InstructGPT, Ouyang et al. arXiv:2203.02155, fine-tunes the 175B davinci)", "proprietary"),
    Entry("text-davinci-003", "text_davinci_003", 175.0, "gpt-3", "large", 4096, "OpenAI API text-davinci-003",
          GPT3 + " (OpenAI model index: a GPT-3.5 model of the davinci size)", "proprietary"),
    Entry("claude-1", "claude", None, "claude", "large", 9000, "Anthropic API claude-v1", "", "proprietary"),
    Entry("claude-2", "claude-2", None, "claude", "large", 100000, "Anthropic API claude-2", "", "proprietary"),
    Entry("claude-2.1", "claude-2.1", None, "claude", "large", 200000, "Anthropic API claude-2.1", "",
          "proprietary"),
    Entry("claude-instant-1.2", "claude-instant-1.2", None, "claude", "large", 100000,
          "Anthropic API claude-instant-1.2", "", "proprietary"),
    Entry("gpt-3.5-turbo-0301", "gpt-3.5-turbo-0301", None, "gpt-3.5", "large", 4096, "OpenAI API gpt-3.5-turbo-0301",
          "", "proprietary"),
    Entry("gpt-3.5-turbo-1106", "gpt-3.5-turbo-1106", None, "gpt-3.5", "large", 16385,
          "OpenAI API gpt-3.5-turbo-1106", "", "proprietary"),
    Entry("gpt-3.5-turbo-instruct", "gpt35_turbo_instruct", None, "gpt-3.5", "large", 4096,
          "OpenAI API gpt-3.5-turbo-instruct", "", "proprietary"),
    Entry("jina-chat", "jina-chat", None, "other", "large", 8192, "Jina AI JinaChat", "", "proprietary"),
)


def leaderboard(path: Path = LEADERBOARD) -> dict[str, float]:
    """Published AlpacaEval 2.0 length-controlled win rates by generator name, in [0, 1]."""
    if not path.exists():
        return {}
    with open(path, encoding="utf-8", newline="") as handle:
        return {
            row[""]: round(float(row["length_controlled_winrate"]) / 100, 4)
            for row in csv.DictReader(handle)
            if row.get("length_controlled_winrate")
        }


def energy_block(params_b: float | None) -> list[str]:
    """The card's ``energy:`` lines by the method in the module docstring."""
    if params_b is None:
        return [
            "energy:",
            "  per_call_j: 0.0",
            f"  per_input_token_j: {PLACEHOLDER_IN_J}",
            f"  per_output_token_j: {PLACEHOLDER_OUT_J}",
            "  source: estimate",
            "  citation: >-",
            "    Placeholder: the size was never published. Order of magnitude of a GPT-4-class query (Epoch AI,",
            '    "How much energy does ChatGPT use?", 2025: ~0.3 Wh for ~400 output tokens, ~3 J per output token;',
            "    input ~10x cheaper), as models/examples/remote-large.yaml. Fit for simulation only.",
        ]
    flops = 2 * params_b * 1e9
    out_j = flops / FLOP_PER_J_DECODE * PUE
    in_j = flops / FLOP_PER_J_PREFILL * PUE
    return [
        "energy:",
        "  per_call_j: 0.0",
        f"  per_input_token_j: {in_j:.4g}",
        f"  per_output_token_j: {out_j:.4g}",
        "  source: estimate",
        "  citation: >-",
        f"    Estimate from the active parameter count ({params_b:g}B), not a measurement. ~2 FLOPs per active",
        f"    parameter per token = {flops:.3g} FLOP/token. NVIDIA H100 SXM, 989e12 dense BF16 FLOP/s at 700 W =",
        "    1.41e12 FLOP/J at peak; assumed 10 % of peak while decoding (1.41e11 FLOP/J) and 40 % for prefill",
        f"    (5.65e11 FLOP/J); datacenter PUE 1.2. Output {out_j:.4g} J/token, input {in_j:.4g} J/token (the method",
        "    of models/catalogue/llama-3-70b-instruct.yaml; Samsi et al., arXiv:2310.03003, measured the same",
        "    order for LLaMA on A100/V100).",
    ]


def card_text(entry: Entry, lc: float | None) -> str:
    size = f"{entry.params_b:g}B (dense)" if entry.params_b is not None else "undisclosed"
    lines = [
        f"# {entry.generator} from the AlpacaEval data: a catalogue card (no backend). Written by",
        "# `python -m router.training.catalogue`; to call the model, copy the card and add a backend.",
        f"name: {entry.name}",
        f"tier: {entry.tier}",
        f"description: {entry.source}, as evaluated in AlpacaEval 2.0 (weighted GPT-4 Turbo judge).",
        f"parameters: {size}",
        f"source: {entry.source}",
        f"license: {entry.license}",
        f"family: {entry.family}",
    ]
    if entry.params_b is not None:
        lines.append(f"active_parameters_b: {entry.params_b:g}")
    else:
        lines.append("simulation_only: true")
    aliases = [entry.generator, *entry.aliases] if entry.generator != entry.name else list(entry.aliases)
    if aliases:
        lines.append("aliases: [" + ", ".join(aliases) + "]")
    lines.append(f"context_length: {entry.context}")
    if lc is not None:
        lines += ["benchmarks:", f"  alpaca_eval_lc: {lc}  # AlpacaEval 2.0 leaderboard, length-controlled win rate"]
    if entry.size_citation:
        lines += ["# size: " + entry.size_citation]
    lines += energy_block(entry.params_b)
    return "\n".join(lines) + "\n"


def write_catalogue(out: Path = CATALOGUE_DIR) -> list[Path]:
    """Write one card per :data:`ENTRIES` row; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    board = leaderboard()
    written = []
    for entry in ENTRIES:
        path = out / f"{entry.name}.yaml"
        path.write_text(card_text(entry, board.get(entry.generator)), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover
    for p in write_catalogue():
        print(p.relative_to(PROJECT_ROOT))
