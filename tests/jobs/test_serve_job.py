"""serve's checks that need no vLLM."""

import subprocess
import sys


def test_serve_without_vllm_names_the_extra(checkpoints):
    block = ("import importlib.util, sys\n"
             "real = importlib.util.find_spec\n"
             "importlib.util.find_spec = lambda name, *a, **k: (\n"
             "    None if name.split('.')[0] == 'vllm' else real(name, *a, **k))\n"
             "from grasp_deploy.cli import main\n"
             "sys.argv = ['grasp-deploy', 'serve', sys.argv[1]]\n"
             "main()\n")
    proc = subprocess.run([sys.executable, "-c", block, str(checkpoints[1])], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "grasp-deploy[cpu]" in proc.stderr
