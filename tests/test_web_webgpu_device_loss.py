"""A GPU device lost in the middle of a reply (destroyed through a test hook prepended to the
worker) hands the reply to the wasm engine, which completes it: the whole reply is still exactly R_q's
greedy reply, and the page says what happened."""

import pytest

from test_web_wasm import have_wasm_toolchain, site  # noqa: F401
from test_web_wasm import greedy_reference
from test_web_webgpu import ask_and_wait, check_reply, open_page
from web_helpers import browser, serving  # noqa: F401

pytestmark = pytest.mark.skipif(not have_wasm_toolchain(), reason="no Rust toolchain for wasm32")

# Prepended to worker.js by the device-loss test only: destroys the GPU device at its Nth queue
# submit (one submit per token), as a driver reset or a lost GPU would mid-reply.
LOSE_DEVICE = """
const __loseAt = %d;
let __submits = 0;
const __requestDevice = GPUAdapter.prototype.requestDevice;
GPUAdapter.prototype.requestDevice = async function (...args) {
  const device = await __requestDevice.apply(this, args);
  const submit = device.queue.submit;
  device.queue.submit = function (...buffers) {
    if (++__submits === __loseAt) device.destroy();
    return submit.apply(this, buffers);
  };
  return device;
};
"""


def test_device_loss_mid_reply_continues_on_cpu(browser, site):  # noqa: F811
    reference = greedy_reference(site)
    assert len(reference[0]) > 6, "the reference reply is too short to lose the GPU in the middle of it"
    requests = []
    with serving(site) as url:
        # Submit 1 is the prompt's prefill, then one per token: 5 tokens come from the GPU.
        context, page, errors = open_page(browser, url, requests, LOSE_DEVICE % 6)
        reply = ask_and_wait(page)
        assert page.inner_text("#status-title") == "The GPU stopped responding; the reply continues on the CPU."
        assert page.input_value("#backend") == "wasm"
        # What the GPU wrote and what the CPU continued make R_q's reply, whole.
        check_reply(reply, reference, "CPU (wasm)")
        assert not errors, errors
        context.close()
