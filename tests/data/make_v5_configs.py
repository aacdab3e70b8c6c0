"""Regenerate tests/data/hf_configs_v5/ from the published configs in tests/data/hf_configs/.

Each published config.json is loaded the way `from_pretrained` loads it (the model type's config class,
`.from_dict`), saved with `save_pretrained` into a temporary directory, and the config.json written there is
copied to hf_configs_v5/ under the same name. The files therefore record how the installed transformers (5.x)
rewrites each published config. Run from anywhere:

    .venv/bin/python tests/data/make_v5_configs.py          # rewrite hf_configs_v5/
    .venv/bin/python tests/data/make_v5_configs.py --check  # exit 1 if any file would change
"""
import argparse
import json
import pathlib
import sys
import tempfile
import warnings

import transformers

HERE = pathlib.Path(__file__).resolve().parent
SRC, DST = HERE / "hf_configs", HERE / "hf_configs_v5"


def rewrite(published):
    """The config.json text transformers writes for the published config dict `published`."""
    config_cls = transformers.CONFIG_MAPPING[published["model_type"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = config_cls.from_dict(dict(published))
        with tempfile.TemporaryDirectory() as tmp:
            config.save_pretrained(tmp)
            return (pathlib.Path(tmp) / "config.json").read_text()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the files in hf_configs_v5/, write nothing")
    args = ap.parse_args(argv)
    if not transformers.__version__.startswith("5."):
        sys.exit(f"transformers {transformers.__version__} is installed; these files record a 5.x rewrite")
    DST.mkdir(exist_ok=True)
    stale = []
    for src in sorted(SRC.glob("*.json")):
        text = rewrite(json.loads(src.read_text()))
        dst = DST / src.name
        if args.check:
            if not dst.exists() or dst.read_text() != text:
                stale.append(dst.name)
        else:
            dst.write_text(text)
    if args.check and stale:
        sys.exit(f"differ from a fresh rewrite by transformers {transformers.__version__}: {', '.join(stale)}")
    print(f"{'checked' if args.check else 'wrote'} {len(list(SRC.glob('*.json')))} configs "
          f"(transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
