"""dhsa-generate: greedy generation from a cached export folder, streamed, with its timings."""

from __future__ import annotations

from pathlib import Path

import click

from .. import generation
from ..errors import DHSAError
from ..model_folder import open_folder
from .common import Command, parse_int_list, user_errors


class _Stream:
    """Prints text as tokens arrive: the whole continuation is decoded each time and only the new part
    is written, so multi-token characters and merged pieces come out right."""

    def __init__(self, tokenizer):
        self.tokenizer, self.tokens, self.shown = tokenizer, [], ""

    def __call__(self, token: int) -> None:
        self.tokens.append(token)
        if self.tokenizer is None:
            click.echo(f"{token} ", nl=False)
            return
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.startswith(self.shown) and not text.endswith("\ufffd"):
            click.echo(text[len(self.shown):], nl=False)
            self.shown = text


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_dir", type=click.Path())
@click.option("--prompt", help="Prompt text.")
@click.option("--prompt-file", type=click.Path(dir_okay=False), help="Read the prompt from this file.")
@click.option("--prompt-ids", callback=parse_int_list, help="The prompt as token ids, e.g. 2,651,1234 (models "
              "exported without a tokenizer).")
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--runtime", type=click.Choice(generation.RUNTIMES), default="auto", show_default=True,
              help="genai: onnxruntime-genai; ort: the own loop on onnxruntime; auto: genai where installed for "
                   "the provider.")
@click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime intra-op threads, either runtime "
              "[default: one per physical core].")
@user_errors
def main(model_dir, prompt, prompt_file, prompt_ids, max_new_tokens, provider, runtime, threads):
    """Generate from MODEL_DIR (written by `dhsa-export MODEL --with-cache --out MODEL_DIR`): DHSA prefill of
    the prompt, then cached decode, greedy. Streams the text, then prints the time to first token, the
    decode speed and the peak memory.

    \b
    Examples:
      dhsa-generate out/gemma3-270m --prompt "The capital of France is" --max-new-tokens 32
      dhsa-generate out/gemma3-270m --prompt-file long.txt --runtime ort --provider cuda
    """
    given = [x for x in (prompt, prompt_file, prompt_ids) if x]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --prompt, --prompt-file or --prompt-ids")
    folder = open_folder(model_dir)
    tokenizer = folder.tokenizer()
    if prompt_ids:
        ids = list(prompt_ids)
        vocab = folder.record["vocab_size"]
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise DHSAError(f"--prompt-ids holds {bad[0]}, outside the vocabulary [0, {vocab})")
    else:
        if tokenizer is None:
            raise DHSAError(f"{model_dir} was exported without a tokenizer (random-init model); use --prompt-ids")
        if prompt_file:
            path = Path(prompt_file)
            if not path.is_file():
                raise DHSAError(f"prompt file {path} not found")
            prompt = path.read_text()
        ids = tokenizer(prompt)["input_ids"]
    generation.check_prompt(folder, len(ids), max_new_tokens)
    loop = generation.open_loop(folder, runtime, provider, threads)
    stream = _Stream(tokenizer)
    result = loop.generate(ids, max_new_tokens, on_token=stream)
    click.echo()
    rate = result.decode_tokens_per_s
    click.echo(f"[{result.runtime}] prompt {result.prompt_tokens} tokens, {len(result.tokens)} generated; "
               f"time to first token {result.first_token_s * 1e3:.1f} ms; decode "
               + (f"{rate:.1f} tokens/s" if rate else "n/a (one token)")
               + f"; peak RSS {result.peak_rss_mib:.0f} MiB", err=True)


if __name__ == "__main__":
    main()
