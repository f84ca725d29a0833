/* dramatiq-preview dashboard: live updates, requeue and purge.
 *
 * Hand-written, no dependencies, no build step.  Job data reaches the page only through
 * textContent and setAttribute on elements made here: never through innerHTML, so a jobId,
 * an error message or metadata holding markup stays text.  The page's Content-Security-Policy
 * (script-src 'self') lets no other script run.
 *
 * The overview polls the JSON routes (/worker/health, /jobs, /dlq) every few seconds while the
 * tab is visible; a job's page follows /job/{id}/events (Server-Sent Events).  Requests that
 * change something (requeue, purge) carry the page's CSRF token in its header.
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

  /* A call of the JSON API: resolves to {status, body}; a session that ended reloads the page
     (which then shows the sign-in form). */
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
        window.location.reload();
        throw new Error("signed out");
      }
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
    var deadCount = byId("dlq-body").children.length;
    var busy = false;

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

    function applyFind() {
      var wanted = find.value.trim();
      Array.prototype.forEach.call(byId("jobs-body").children, function (row) {
        var id = row.getAttribute("data-job-id") || "";
        row.hidden = wanted !== "" && id.indexOf(wanted) === -1;
      });
    }

    function renderJobs(answer) {
      if (answer.status !== 200 || !answer.body || !answer.body.jobs) {
        showError("jobs-error", message(answer, "The recent jobs could not be read."));
        return;
      }
      showError("jobs-error", "");
      var jobs = answer.body.jobs;
      if (!changed("jobs", jobs)) return;
      var tbody = byId("jobs-body");
      tbody.replaceChildren.apply(tbody, jobs.map(jobRow));
      byId("jobs-empty").hidden = jobs.length > 0;
      applyFind();
    }

    function renderDeadLetters(answer) {
      if (answer.status !== 200 || !answer.body || !answer.body.deadLetters) {
        showError("dlq-error", message(answer, "The dead letters could not be read."));
        return;
      }
      showError("dlq-error", "");
      var letters = answer.body.deadLetters.slice().reverse();  /* newest failure first */
      deadCount = letters.length;
      if (!changed("dlq", letters)) return;
      var tbody = byId("dlq-body");
      tbody.replaceChildren.apply(tbody, letters.map(letterRow));
      setText("dlq-count", String(letters.length));
      byId("dlq-empty").hidden = letters.length > 0;
      purge.disabled = letters.length === 0;
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

    function poll() {
      if (busy || document.hidden) return Promise.resolve();
      busy = true;
      var failed = function (error) { return { status: 0, body: { message: String(error.message) } }; };
      return Promise.all([
        call("GET", "/worker/health").catch(failed),
        call("GET", jobsPath()).catch(failed),
        call("GET", "/dlq").catch(failed)
      ]).then(function (answers) {
        renderHealth(answers[0]);
        renderJobs(answers[1]);
        renderDeadLetters(answers[2]);
        announce();
        document.body.setAttribute("data-updated", String(Date.now()));
      }).then(function () { busy = false; }, function () { busy = false; });
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
      requeue(button.getAttribute("data-job-id"), button).then(poll);
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
      }).then(poll);
    }

    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) poll();
    });
    setInterval(poll, period);
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
          if (response.status === 401) window.location.reload();
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
    if (page === "overview") overview();
    else if (page === "job") jobPage();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
