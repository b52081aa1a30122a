"""The chat page in a real headless Chromium: a streamed answer, feedback buttons, rows in the store."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from serve_helpers import running_server

CHROMIUM = "/usr/bin/chromium"
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def browser_page(tmp_path):
    if not os.path.exists(CHROMIUM) and not shutil.which("chromium"):
        pytest.skip("Debian chromium is not installed (apt-get install chromium chromium-driver)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "chromium-profile"),  # fresh profile: no state from other runs
            executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
            viewport={"width": 1000, "height": 760},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def _one_event_at_a_time(monkeypatch) -> None:
    """The engine client's reader thread (in this process: `engine_process._deliver`) hands an answer its next
    event only once the HTTP side has taken the previous one: the relay has none pending and the answer's queue is
    empty (`app._submit_all` makes each answer's emit `partial(relay.emit, queue)`). An event taken alone goes out
    alone: the answer has yielded its piece before the relay can put the next event in its queue."""
    from llm_recipes.serving import engine_process

    deliver = engine_process._deliver

    def one_at_a_time(request, event):
        relay, events = request.emit.func.__self__, request.emit.args[0]
        deadline = time.monotonic() + 30
        while (relay._pending or not events.empty()) and time.monotonic() < deadline:
            time.sleep(0.001)
        deliver(request, event)

    monkeypatch.setattr(engine_process, "_deliver", one_at_a_time)


def test_chat_page_streams_and_stores_feedback(browser_page, tiny_model_dir, tmp_path, monkeypatch):
    from playwright.sync_api import expect

    page = browser_page
    store_path = tmp_path / "feedback.sqlite"
    with running_server(tiny_model_dir, store_path) as (url, app, engine, store):
        page.goto(url + "/")
        # playwright's expect polls without eval, which the page's Content-Security-Policy forbids
        expect(page.locator("#model-name")).to_contain_text("tiny")
        # record every text the answer shows while it streams: one mutation record per update of the
        # answer, even when several server-sent events arrive in one network read
        page.evaluate("""() => {
            window.seenLengths = [];
            new MutationObserver((records) => {
                for (const record of records) {
                    const box = record.target.closest && record.target.closest('.msg.assistant.streaming');
                    if (!box || !record.target.classList.contains('text')) continue;
                    for (const node of record.addedNodes) window.seenLengths.push(node.textContent.length);
                }
            }).observe(document.getElementById('conversation'), {subtree: true, childList: true});
        }""")
        # the server joins tokens already waiting into one event, and the one-row step decodes this tiny model's
        # tokens in microseconds: left alone, an answer can be decoded whole before its first event is sent. Here
        # the HTTP side takes the answer's engine events one at a time, so each token with text is an event of
        # its own however fast the machine (the answer's first token is random: it may have no text of its own)
        page.fill("#max-tokens", "64")
        page.fill("#temperature", "0.8")
        page.fill("#prompt", "How do I join two paths in Python?")
        with monkeypatch.context() as patch:
            _one_event_at_a_time(patch)
            page.click("#send")
            first = page.locator(".msg.assistant").nth(0)
            first.locator(".actions").wait_for(timeout=30_000)  # controls appear when the stream has ended
        answer = first.locator(".text").inner_text()
        seen = page.evaluate("window.seenLengths")
        assert len({n for n in seen if n > 0}) >= 2, f"the answer did not arrive in pieces: {seen}"

        first.locator("button.up").click()
        expect(first.locator(".status")).to_contain_text("saved")
        rows = list(store.rows())
        assert len(rows) == 1 and rows[0]["rating"] == 1
        assert rows[0]["messages"] == [{"role": "user", "content": "How do I join two paths in Python?"}]
        assert rows[0]["completion"].strip() == answer.strip()

        # a second turn keeps the conversation; thumbs down plus a suggested better answer
        page.fill("#prompt", "And how do I split one?")
        page.click("#send")
        second = page.locator(".msg.assistant").nth(1)
        second.locator(".actions").wait_for(timeout=30_000)
        second.locator("button.down").click()
        expect(second.locator(".status")).to_contain_text("saved")
        second.locator("button.suggest-toggle").click()
        second.locator(".suggest textarea").fill("Use os.path.split(path).")
        second.locator("button.suggest-send").click()
        for _ in range(100):  # the status already said "saved" once: wait for the row itself
            if store.count() == 3:
                break
            page.wait_for_timeout(100)
        rows = list(store.rows())
        assert [(r["rating"], r["suggestion"]) for r in rows] == [(1, None), (-1, None),
                                                                  (-1, "Use os.path.split(path).")]
        assert [m["role"] for m in rows[-1]["messages"]] == ["user", "assistant", "user"]

        shot = tmp_path / "chat_page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("LLM_RECIPES_UPDATE_DOCS"):  # refresh the picture in the docs on request only
            from llm_recipes.fileio import atomic_write_bytes

            atomic_write_bytes(REPO_ROOT / "docs" / "chat_page.png", shot.read_bytes())


@pytest.fixture()
def small_context_model_dir(tiny_model_dir, tmp_path):
    """The tiny model with a 128-position context, the quickstart model's size."""
    import json

    path = tmp_path / "small_context"
    shutil.copytree(tiny_model_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = 128
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_long_conversation_with_a_128_token_model_never_fails(browser_page, small_context_model_dir, tmp_path):
    """Eight turns with a 128-position model and a system prompt: the page's defaults come from the model
    (answers of up to a quarter of the context), the oldest turns are left out when the conversation
    outgrows the context (the system prompt always stays), a note says so, and no turn ends in an error."""
    from playwright.sync_api import expect

    page = browser_page
    with running_server(small_context_model_dir, tmp_path / "feedback.sqlite", default_max_tokens=256) as (
            url, app, engine, store):
        assert app.state.settings.context_window == 128
        sent = []  # the message lists the page sends
        page.on("request", lambda r: sent.append(json.loads(r.post_data)["messages"])
                if r.url.endswith("/v1/chat/completions") else None)
        page.goto(url + "/")
        expect(page.locator("#model-name")).to_contain_text("context 128 tokens")
        assert page.input_value("#max-tokens") == "32"  # a quarter of the context, not the server's 256
        assert int(page.get_attribute("#max-tokens", "max")) < 128
        system = "You answer questions about Python in one sentence."
        page.fill("#system-prompt", system)
        questions = ["How do I join two paths in Python?", "And how do I split one into its parts?",
                     "What does os.path.exists return for a broken symbolic link?",
                     "How do I list the files of a folder, newest first?", "Can I do that with pathlib too?",
                     "How do I read a text file line by line without loading it whole?",
                     "What encoding does open() use when I give none?", "Thanks! One more: how do I make a folder?"]
        for turn, question in enumerate(questions):
            page.fill("#prompt", question)
            page.click("#send")
            answer = page.locator(".msg.assistant").nth(turn)
            answer.locator(".actions").wait_for(timeout=60_000)  # the stream ended without an error
            assert answer.locator(".error").count() == 0, answer.inner_text()
        assert page.locator(".error").count() == 0
        expect(page.locator("#trim-note")).to_contain_text("context is 128 tokens")
        expect(page.locator("#trim-note")).to_contain_text("oldest messages were left out")
        assert page.locator(".msg.trimmed").count() >= 4  # the left-out turns are shown faded
        assert len(sent) == len(questions)
        assert len(sent[-1]) < 2 * len(questions) - 1  # the last request no longer carried everything
        assert sent[-1][-1] == {"role": "user", "content": questions[-1]}
        assert all(messages[0] == {"role": "system", "content": system} for messages in sent)
        assert len(sent[-1]) >= 2
        # feedback on the last answer records the conversation as the user saw it, system prompt first
        page.locator(".msg.assistant").nth(len(questions) - 1).locator("button.up").click()
        expect(page.locator(".msg.assistant").nth(len(questions) - 1).locator(".status")).to_contain_text("saved")
        row = list(store.rows())[-1]
        assert row["messages"][0]["role"] == "system" and len(row["messages"]) == 2 * len(questions)
        shot = tmp_path / "chat_page_small_context.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("LLM_RECIPES_SCREENSHOT_DIR"):  # to look at it
            shutil.copy(shot, os.environ["LLM_RECIPES_SCREENSHOT_DIR"])
