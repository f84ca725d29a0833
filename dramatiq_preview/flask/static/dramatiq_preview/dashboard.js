/* dramatiq-preview dashboard: live updates, requeue and purge.
 *
 * Hand-written, no dependencies, no build step.  Job data reaches the page only through
 * textContent and setAttribute on elements made here: never through innerHTML, so a jobId,
 * an error message or metadata holding markup stays text.  The page's Content-Security-Policy
 * (script-src 'self') lets no other script run.
 *
 * The overview polls /worker/health and /jobs every few seconds while the tab is visible, and
 * /dlq only when the health's dead-letter counts change, after a requeue or purge, and now and
 * then (listing a RabbitMQ dead-letter queue takes its messages and puts them back); a job's
 * page follows /job/{id}/events (Server-Sent Events).  Requests that change something
 * (requeue, purge) carry the page's CSRF token in its header.
 */
(function () {
  "use strict";

  function meta(name) {
    var node = document.querySelector('meta[name="' + name + '"]');
    return node ? node.getAttribute("content") || "" : "";
  }

  var API = meta("dp-api");
  var CSRF = meta("dp-csrf");
  var CSRF_HEADER = meta("dp-csrf-header") || "X-CSRF-Token";
  var FINAL = { succeeded: true, failed: true, cancelled: true };

  /* An element with attributes and text; children may be nodes or strings (as text). */
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      var value = attrs[name];
      if (value !== null && value !== undefined && value !== false) {
        node.setAttribute(name, String(value));
      }
    });
    [].concat(children === undefined ? [] : children).forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    });
    return node;
  }

  function byId(id) {
    return document.getElementById(id);
  }

  function setText(id, text) {
    var node = byId(id);
    if (node && node.textContent !== text) node.textContent = text;
  }

  /* Only paths of this site: a URL from a response never becomes javascript: or another host. */
  function localPath(url) {
    return typeof url === "string" && url.charAt(0) === "/" && url.charAt(1) !== "/" &&
      url.charAt(1) !== "\\" ? url : null;
  }

  function when(iso) {
    if (typeof iso !== "string" || !iso) return "-";
    return iso.replace("T", " ").split(".")[0].replace(/Z$/, "") + " UTC";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || isNaN(seconds)) return "-";
    if (seconds < 1) return Math.round(seconds * 1000) + " ms";
    if (seconds < 120) return seconds.toFixed(1) + " s";
    if (seconds < 7200) return Math.round(seconds / 60) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }

  function between(start, end) {
    if (!start || !end) return null;
    var a = Date.parse(start), b = Date.parse(end);
    return isNaN(a) || isNaN(b) ? null : Math.max(0, (b - a) / 1000);
  }

  function errorText(error) {
    if (!error || typeof error !== "object") return "";
    return [error.type, error.message].filter(function (part) { return part; }).join(": ");
  }

  function badge(state, id) {
    return el("span", { "class": "badge state-" + state, "data-state": state, id: id }, state);
  }

  function numberOrUnknown(value) {
    return value === null || value === undefined ? "?" : String(value);
  }

  var toastTimer = null;
  function toast(text, bad) {
    var node = byId("toast");
    if (!node) return;
    node.className = bad ? "toast bad" : "toast";
    node.textContent = text;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { node.textContent = ""; }, 8000);
  }

  /* A 401 means the session ended: reload once, and the page shows the sign-in form.  Once
     only: when the page itself loads but the API still says 401 (a proxy's own credentials in
     the way, say), reloading again would loop; the flag lives in sessionStorage, and is
     cleared by the sign-in form and by an answer the API gave to this session. */
  var RELOADED = "dramatiq-preview.reloaded-on-401";

  function storage() {
    try { return window.sessionStorage; } catch (e) { return null; }
  }

  function signedOut() {
    var store = storage();
    if (store && store.getItem(RELOADED)) {
      toast("The API refuses this session (HTTP 401): sign out and in again, or check the " +
        "proxy in front of it.", true);
      return;
    }
    if (store) store.setItem(RELOADED, "1");
    window.location.reload();
  }

  function authenticated() {
    var store = storage();
    if (store) store.removeItem(RELOADED);
  }

  /* A call of the JSON API: resolves to {status, body}; a 401 is signedOut(). */
  function call(method, path) {
    var headers = { Accept: "application/json" };
    if (method !== "GET") headers[CSRF_HEADER] = CSRF;
    return fetch(API + path, {
      method: method,
      headers: headers,
      credentials: "same-origin",
      cache: "no-store"
    }).then(function (response) {
      if (response.status === 401) {
        signedOut();
        throw new Error("signed out");
      }
      if (response.ok && path.indexOf("/worker/health") !== 0) authenticated();
      return response.json().catch(function () { return null; }).then(function (body) {
        return { status: response.status, body: body };
      });
    });
  }

  function message(answer, fallback) {
    return answer.body && answer.body.message ? answer.body.message : fallback;
  }

  function requeue(jobId, button) {
    if (button) button.disabled = true;
    return call("POST", "/dlq/" + encodeURIComponent(jobId) + "/requeue").then(function (answer) {
      if (answer.status === 202) {
        var state = answer.body && answer.body.state ? answer.body.state : "queued";
        toast("Job " + jobId + " was requeued (" + state + ").", false);
        return true;
      }
      if (answer.status === 404) {
        toast("Job " + jobId + " has no dead letter: it was requeued or purged already.", true);
      } else {
        toast(message(answer, "Requeue failed (HTTP " + answer.status + ")."), true);
      }
      if (button) button.disabled = false;
      return false;
    }, function (error) {
      toast("Requeue failed: " + error.message, true);
      if (button) button.disabled = false;
      return false;
    });
  }

  /* --- the overview ------------------------------------------------------------------- */

  function overview() {
    var health = byId("health");
    var jobsTable = byId("jobs");
    var filter = byId("state-filter");
    var find = byId("find-job");
    var purge = byId("purge");
    var dialog = byId("purge-dialog");
    var period = parseInt(health.getAttribute("data-poll-ms"), 10) || 4000;
    var jobPage = jobsTable.getAttribute("data-job-page");
    var signatures = {};
    var dlqSection = byId("dlq-section");
    var dlqLimit = parseInt(dlqSection.getAttribute("data-dlq-limit"), 10) || 100;
    var dlqEvery = parseInt(dlqSection.getAttribute("data-dlq-every-ms"), 10) || 60000;
    var deadCount = parseInt(byId("dlq-count").textContent, 10) || 0;
    var busy = false;
    var again = false;         /* something asked for a poll while one was in flight */
    var dlqWanted = true;      /* read /dlq at the next poll */
    var dlqAt = 0;             /* when /dlq was last read */
    var deadSeen = null;       /* the health's dead counts when /dlq was last read */

    function changed(key, value) {
      var text = JSON.stringify(value);
      if (signatures[key] === text) return false;
      signatures[key] = text;
      return true;
    }

    function cell(label, content, cls) {
      return el("td", { "data-label": label, "class": cls }, content);
    }

    function jobLink(jobId) {
      return el("a", { "class": "job-link mono", href: jobPage + encodeURIComponent(jobId) }, jobId);
    }

    function time(iso) {
      return el("time", { datetime: iso || "" }, when(iso));
    }

    function jobRow(job) {
      var outputs = job.result && job.result.outputs ? job.result.outputs : [];
      var thumb = outputs.length ? localPath(outputs[0].url) : null;
      var progress = el("progress", {
        max: 100, value: job.progress || 0, "aria-label": "Progress of " + job.jobId
      }, (job.progress || 0) + "%");
      return el("tr", { "data-job-id": job.jobId }, [
        cell("Job", jobLink(job.jobId)),
        cell("State", badge(job.state)),
        cell("Priority", job.priority),
        cell("Attempts", String(job.attempts), "num"),
        cell("Progress", progress),
        cell("Created", time(job.createdAt)),
        cell("Finished", time(job.finishedAt)),
        cell("Error", errorText(job.error), "error-text"),
        cell("Preview", thumb ? el("img", {
          "class": "thumb", src: thumb, alt: "Preview of " + job.jobId,
          loading: "lazy", width: 48, height: 48
        }) : null)
      ]);
    }

    function letterRow(letter) {
      var button = el("button", {
        type: "button", "class": "requeue", "data-job-id": letter.jobId,
        "aria-label": "Requeue " + letter.jobId
      }, "Requeue");
      return el("tr", { "data-job-id": letter.jobId }, [
        cell("Job", jobLink(letter.jobId)),
        cell("Kind", letter.kind || "render"),
        cell("Queue", letter.queue || "", "mono"),
        cell("Failed", time(letter.failedAt)),
        cell("Attempts", String(letter.attempts === undefined ? "" : letter.attempts), "num"),
        cell("Error", errorText(letter.error), "error-text"),
        cell("Actions", button)
      ]);
    }

    /* Redraw a table body, keeping the keyboard focus on the same job's link or button. */
    function redraw(tbody, rows) {
      var focused = document.activeElement;
      var kept = null;
      if (focused && focused !== document.body && tbody.contains(focused)) {
        var row = focused.closest("tr");
        kept = {
          id: row ? row.getAttribute("data-job-id") : null,
          cls: focused.classList.contains("requeue") ? "button.requeue" : "a.job-link"
        };
      }
      tbody.replaceChildren.apply(tbody, rows);
      if (kept && kept.id !== null) {
        var again_ = tbody.querySelector('tr[data-job-id="' + CSS.escape(kept.id) + '"] ' + kept.cls);
        if (again_) again_.focus();
      }
    }

    function showError(id, text) {
      var node = byId(id);
      node.textContent = text || "";
      node.hidden = !text;
    }

    function renderHealth(answer) {
      if (!answer.body || !answer.body.queues) {
        showError("health-error", message(answer, "The health check did not answer."));
        return;
      }
      showError("health-error", "");
      var body = answer.body;
      if (!changed("health", [body.status, body.queues, body.workers, body.reasons])) return;
      var status = byId("health-status");
      status.className = "badge status-" + body.status;
      status.textContent = body.status;
      setText("workers-live", numberOrUnknown(body.workers ? body.workers.live : null));
      byId("health-reasons").replaceChildren.apply(byId("health-reasons"),
        (body.reasons || []).map(function (reason) { return el("li", {}, reason.message); }));
      var rows = Object.keys(body.queues).map(function (queue) {
        var lane = body.queues[queue];
        return el("tr", { "data-queue": queue }, [
          cell("Lane", lane.priority),
          cell("Queue", queue, "mono"),
          cell("Depth", numberOrUnknown(lane.depth), "num"),
          cell("Delayed", numberOrUnknown(lane.delayed), "num"),
          cell("Dead", numberOrUnknown(lane.dead), "num"),
          cell("Oldest waiting", lane.oldestJobAgeSeconds === null ? "?" :
            duration(lane.oldestJobAgeSeconds), "num")
        ]);
      });
      var body_ = byId("lanes-body");
      body_.replaceChildren.apply(body_, rows);
    }

    var emptyText = byId("jobs-empty").textContent;

    function applyFind() {
      var wanted = find.value.trim();
      var shown = 0;
      Array.prototype.forEach.call(byId("jobs-body").children, function (row) {
        var id = row.getAttribute("data-job-id") || "";
        row.hidden = wanted !== "" && id.indexOf(wanted) === -1;
        if (!row.hidden) shown += 1;
      });
      var empty = byId("jobs-empty");
      empty.textContent = shown === 0 && wanted !== "" && byId("jobs-body").children.length ?
        "No jobs with an id containing \u201c" + wanted + "\u201d among these." : emptyText;
      empty.hidden = shown > 0;
    }

    function renderJobs(answer, path) {
      /* An answer for another filter than the one now chosen: the follow-up poll has it. */
      if (path !== jobsPath()) return;
      if (answer.status !== 200 || !answer.body || !answer.body.jobs) {
        showError("jobs-error", message(answer, "The recent jobs could not be read."));
        return;
      }
      showError("jobs-error", "");
      var jobs = answer.body.jobs;
      if (!changed("jobs", jobs)) return;
      var tbody = byId("jobs-body");
      redraw(tbody, jobs.map(jobRow));
      emptyText = "No jobs" + (filter.value ? " in state " + filter.value : "") + ".";
      applyFind();
    }

    function renderDeadLetters(answer) {
      if (answer.status !== 200 || !answer.body || !answer.body.deadLetters) {
        showError("dlq-error", message(answer, "The dead letters could not be read."));
        return;
      }
      showError("dlq-error", "");
      var letters = answer.body.deadLetters.slice().reverse();  /* newest failure first */
      var total = typeof answer.body.total === "number" ? answer.body.total : letters.length;
      deadCount = total;
      if (!changed("dlq", [total, letters])) return;
      var tbody = byId("dlq-body");
      redraw(tbody, letters.map(letterRow));
      setText("dlq-count", String(total));
      var shown = byId("dlq-shown");
      shown.textContent = "newest " + letters.length + " shown";
      shown.hidden = total <= letters.length;
      byId("dlq-empty").hidden = total > 0;
      purge.disabled = total === 0;
    }

    /* The health's dead-letter counts (lanes and webhook deliveries), as one string. */
    function deadCounts(answer) {
      var body = answer.body;
      if (!body || !body.queues) return null;
      return JSON.stringify([Object.keys(body.queues).map(function (queue) {
        return [queue, body.queues[queue].dead];
      }), body.webhooks ? body.webhooks.dead : null]);
    }

    function announce() {
      var shown = byId("jobs-body").children.length;
      setText("live", "Live: " + shown + " recent job(s), " + deadCount + " dead letter(s), " +
        "status " + byId("health-status").textContent + ".");
    }

    function jobsPath() {
      var state = filter.value;
      return "/jobs?limit=50" + (state ? "&state=" + encodeURIComponent(state) : "");
    }

    /* One round of news.  A poll asked for while one is in flight (a filter change, a
       requeue) is not dropped: it runs when the one in flight ends. */
    function poll(withDeadLetters) {
      if (withDeadLetters) dlqWanted = true;
      if (busy) {
        again = true;
        return Promise.resolve();
      }
      if (document.hidden) return Promise.resolve();
      busy = true;
      again = false;
      var failed = function (error) { return { status: 0, body: { message: String(error.message) } }; };
      var path = jobsPath();
      return Promise.all([
        call("GET", "/worker/health").catch(failed),
        call("GET", path).catch(failed)
      ]).then(function (answers) {
        var counts = deadCounts(answers[0]);
        var due = dlqWanted || Date.now() - dlqAt >= dlqEvery || (counts !== null && counts !== deadSeen);
        renderHealth(answers[0]);
        renderJobs(answers[1], path);
        if (!due) return null;
        dlqWanted = false;
        return call("GET", "/dlq?limit=" + dlqLimit).catch(failed).then(function (answer) {
          dlqAt = Date.now();
          if (answer.status === 200) deadSeen = counts;
          renderDeadLetters(answer);
        });
      }).then(function () {
        announce();
        document.body.setAttribute("data-updated", String(Date.now()));
      }).then(function () { busy = false; }, function () { busy = false; }).then(function () {
        if (again) return poll();
        return null;
      });
    }

    filter.addEventListener("change", function () {
      var url = new URL(window.location.href);
      if (filter.value) url.searchParams.set("state", filter.value);
      else url.searchParams.delete("state");
      url.searchParams.delete("job");
      window.history.replaceState(null, "", url.pathname + url.search);
      delete signatures.jobs;
      poll();
    });
    find.addEventListener("input", applyFind);
    applyFind();

    byId("dlq-body").addEventListener("click", function (event) {
      var button = event.target.closest("button.requeue");
      if (!button) return;
      requeue(button.getAttribute("data-job-id"), button).then(function () { return poll(true); });
    });

    purge.addEventListener("click", function () {
      setText("purge-count", String(deadCount));
      if (typeof dialog.showModal === "function") {
        dialog.returnValue = "";
        dialog.showModal();
      } else if (window.confirm("Purge every dead letter? Their jobs can no longer be requeued.")) {
        doPurge();
      }
    });
    dialog.addEventListener("close", function () {
      if (dialog.returnValue === "confirm") doPurge();
      purge.focus();
    });

    function doPurge() {
      purge.disabled = true;
      call("POST", "/dlq/purge").then(function (answer) {
        if (answer.status === 200 && answer.body) {
          toast("Purged " + answer.body.purged + " dead letter(s).", false);
        } else {
          toast(message(answer, "Purge failed (HTTP " + answer.status + ")."), true);
        }
      }, function (error) {
        toast("Purge failed: " + error.message, true);
      }).then(function () { return poll(true); });
    }

    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) poll();
    });
    setInterval(function () { poll(); }, period);
    poll();
  }

  /* --- a job's page ------------------------------------------------------------------- */

  function jobPage() {
    var root = byId("job");
    var jobId = root.getAttribute("data-job-id");
    var eventsUrl = localPath(root.getAttribute("data-events-url"));
    var statusUrl = localPath(root.getAttribute("data-status-url"));
    var requeueButton = byId("job-requeue");
    var source = null;
    var fallback = null;

    function render(job) {
      var state = byId("job-state");
      if (state.getAttribute("data-state") !== job.state) {
        state.replaceWith(badge(job.state, "job-state"));
      }
      root.setAttribute("data-final", FINAL[job.state] ? "true" : "false");
      var progress = byId("job-progress");
      progress.value = job.progress || 0;
      progress.textContent = (job.progress || 0) + "%";
      setText("job-progress-text", (job.progress || 0) + "%");
      setText("job-priority", job.priority);
      setText("job-attempts", String(job.attempts));
      [["job-created", job.createdAt], ["job-started", job.startedAt],
        ["job-finished", job.finishedAt], ["job-next", job.nextAttemptAt]].forEach(function (pair) {
        var node = byId(pair[0]);
        node.setAttribute("datetime", pair[1] || "");
        if (node.textContent !== when(pair[1])) node.textContent = when(pair[1]);
      });
      setText("job-waited", duration(between(job.createdAt, job.startedAt)));
      setText("job-ran", duration(between(job.startedAt, job.finishedAt)));
      var error = job.error && typeof job.error === "object" ? job.error : null;
      byId("error-section").hidden = !error;
      setText("job-error-type", error ? String(error.type || "") : "");
      setText("job-error-retryable", error && "retryable" in error ? (error.retryable ? "yes" : "no") : "");
      setText("job-error-message", error ? String(error.message || "") : "");
      requeueButton.hidden = job.state !== "failed";
      requeueButton.disabled = false;
      renderOutputs(job);
    }

    function renderOutputs(job) {
      var outputs = job.state === "succeeded" && job.result && job.result.outputs ? job.result.outputs : [];
      var list = byId("outputs");
      if (list.getAttribute("data-shown") === JSON.stringify(outputs)) return;
      list.setAttribute("data-shown", JSON.stringify(outputs));
      var items = outputs.map(function (output, index) {
        var url = localPath(output.url);
        var name = String(output.path || "").split("/").pop();
        var facts = output.width + "×" + output.height + " " + output.format +
          (output.bytes !== null && output.bytes !== undefined ? ", " + output.bytes + " bytes" : "");
        var image = url ? el("a", { href: url }, el("img", {
          src: url, alt: "Output " + index + " of " + jobId, width: output.width, height: output.height
        })) : null;
        return el("li", {}, [image, el("span", { "class": "mono" }, name), el("span", {}, facts)]);
      });
      if (!items.length && !list.children.length) return;
      list.replaceChildren.apply(list, items);
      byId("outputs-empty").hidden = items.length > 0;
    }

    function pollStatus() {
      if (document.hidden || !statusUrl) return;
      fetch(statusUrl, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (response.status === 401) signedOut();
          if (response.ok) authenticated();
          return response.status === 200 ? response.json() : null;
        })
        .then(function (job) {
          if (!job) return;
          render(job);
          if (FINAL[job.state]) stopFallback();
        }).catch(function () {});
    }

    function stopFallback() {
      if (fallback !== null) clearInterval(fallback);
      fallback = null;
    }

    function follow() {
      if (source || !eventsUrl || typeof window.EventSource !== "function") {
        if (!source && fallback === null) fallback = setInterval(pollStatus, 4000);
        return;
      }
      source = new window.EventSource(eventsUrl, { withCredentials: true });
      source.addEventListener("status", function (event) {
        var job;
        try { job = JSON.parse(event.data); } catch (e) { return; }
        render(job);
        if (FINAL[job.state]) {
          source.close();
          source = null;
        }
      });
      source.addEventListener("error", function () {
        /* Closed for good (a 204 after the final event, a 401, a 404): fall back to polling
           until the job is final; otherwise the browser reconnects by itself. */
        if (source && source.readyState === window.EventSource.CLOSED) {
          source = null;
          if (root.getAttribute("data-final") !== "true" && fallback === null) {
            fallback = setInterval(pollStatus, 4000);
          }
        }
      });
    }

    requeueButton.addEventListener("click", function () {
      requeue(jobId, requeueButton).then(function (ok) {
        if (ok) {
          requeueButton.hidden = true;
          pollStatus();
          follow();
        }
      });
    });

    if (root.getAttribute("data-final") !== "true") follow();
  }

  function start() {
    var page = document.body.getAttribute("data-page");
    if (page === "login") authenticated();  /* the reload reached the sign-in form */
    if (page === "overview") overview();
    else if (page === "job") jobPage();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
