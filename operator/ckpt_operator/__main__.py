from ckpt_operator.cli.operator import app

app(prog_name="ckpt-operator")
