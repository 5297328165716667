from ckpt_operator.cli import app

app(prog_name="ckpt-operator")
