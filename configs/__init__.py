"""The shipped presets (`NAME.toml`). setup.cfg installs this folder as the package
`harness.presets`, so an installed harness finds them through importlib.resources from
any directory (harness/config/presets.py); `harness-train --list_configs` lists them."""
