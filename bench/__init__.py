"""`edge bench`: size, accuracy, load time, latency, throughput and memory of every backend x weight format.

`harness` plans and runs the rows (each in its own `worker` process, repeats interleaved),
`rows` summarises repeats (min / median / max), `machine` describes the hardware and its rough
peak, `report` renders the table / markdown / JSON, `plot` the PNG, `cli` glues them to click.
"""
