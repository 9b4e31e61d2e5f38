"""`jaxcls bench` (jaxcls/launch/bench.py) at its old path, for the scripts and notes that run
`python benchmarks/bench_train_step.py ...`; see that module for the flags and what it measures."""

import runpy

if __name__ == '__main__':
  runpy.run_module('jaxcls.launch.bench', run_name='__main__', alter_sys=True)
