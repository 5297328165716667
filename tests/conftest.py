pytest_plugins = ["ckpt_operator.testing.pytest_plugin"]
