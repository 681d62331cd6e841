"""Where results go: the CSV files (`csvfiles`), the run manifest (`manifest`), the
regression gate (`gate`), the terminal summary (`summary`) and the shard merge (`merge`).
All of them read and write `dllm_bench.rows.Row` values; only `csvfiles` formats them."""
