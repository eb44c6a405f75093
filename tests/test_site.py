"""Sites as data (issue 18): each facility described once; `hepml-kit doctor` recognises Polaris as it
recognises Perlmutter; the projection has a Polaris preset with half Perlmutter's NICs."""

import os
import subprocess
import sys

import pytest

from hepml_kit.profile.projection import MACHINES, PERLMUTTER, POLARIS, allreduce_time
from hepml_kit.site import SITES, detect_site, site_name

EXE = os.path.join(os.path.dirname(sys.executable), "hepml-kit")


@pytest.mark.parametrize("env, host, want", [
    ({"PBS_JOBID": "123.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"}, "somewhere",
     "ALCF Polaris (PBS job 123."),
    ({}, "x3005c0s13b0n0", "ALCF Polaris (login/Jupyter node)"),
    ({}, "polaris-login-02", "ALCF Polaris (login/Jupyter node)"),
    ({"NERSC_HOST": "perlmutter", "SLURM_JOB_ID": "9"}, "nid001234", "NERSC Perlmutter (Slurm job 9)"),
    ({"SLURM_JOB_ID": "9", "SLURM_JOB_NUM_NODES": "2"}, "laptop", "Slurm allocation (job 9, 2 node(s))"),
    ({"PBS_JOBID": "5.server"}, "laptop", "PBS allocation (job 5.server)"),
    ({}, "laptop", "plain machine"),
])
def test_site_is_recognised(env, host, want):
    assert site_name(env, host).startswith(want)


def test_every_site_has_what_the_kit_needs():
    for site in SITES.values():
        assert (site.scheduler in ("slurm", "pbs") and site.launcher in ("srun", "mpiexec")
                and site.gpus_per_node > 0)
        assert site.sources and site.activate and site.filesystems and site.jupyter_kernels
        assert site.machine is None or site.machine in MACHINES
    polaris = SITES["polaris"]
    assert (polaris.scheduler, polaris.launcher, polaris.gpus_per_node) == ("pbs", "mpiexec", 4)
    assert "2 NICs" in polaris.interconnect and "Slingshot-11" in polaris.interconnect
    assert SITES["aurora"].dist_backend == "xccl"
    assert detect_site({}, "x4102c5s2b0n0").name == "aurora"


def test_polaris_projection_preset_has_half_the_nic_bandwidth():
    assert POLARIS.inter_bus_bw == PERLMUTTER.inter_bus_bw / 2 and "Polaris" in POLARIS.sources
    big = 468e6  # the U-Net's gradients
    assert allreduce_time(big, 4, POLARIS) > 1.5 * allreduce_time(big, 4, PERLMUTTER)
    assert allreduce_time(big, 1, POLARIS) == pytest.approx(allreduce_time(big, 1, PERLMUTTER))


def test_doctor_names_polaris_in_a_pbs_job():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NERSC_"))}
    env["PBS_JOBID"] = "42.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"
    out = subprocess.run([EXE, "doctor"], capture_output=True, text=True, timeout=120, env=env)
    assert "ALCF Polaris (PBS job 42.polaris-pbs-01" in out.stdout, out.stdout + out.stderr
