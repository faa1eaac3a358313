/*
 * eventlib.js: log eventlib events from a browser.
 *
 *   <script src="/event/eventlib.js"></script>
 *   <script>eventlib.log('deals.DealClick', {deal_id: 42});</script>
 *
 * eventlib.log(name, data, options) works like Python's eventlib.log(): it
 * POSTs {"data": data} as JSON to the endpoint (by default the "log" next to
 * this script, /event/log), with the name in its query string
 * (?__event__=name), and returns a Promise. The seed's
 * yipit.event.log is the same function.
 *
 * Transports, in order: navigator.sendBeacon, which the browser delivers even
 * when the page navigates away right after the call (a click on a link);
 * then fetch with keepalive; then XMLHttpRequest. A body over the beacon's
 * 64 KiB limit skips the first two.
 *
 * The Promise resolves with the event id when the transport can tell it
 * (fetch, XHR), and with null when the browser only queued the request
 * (sendBeacon). It rejects with an Error whose message is the server's when
 * the event was refused, or the network's when it could not be sent. The
 * page never sees an exception: log() itself never throws, and a rejection
 * nobody handles is not reported as an error.
 *
 * options: {endpoint: url, transport: "beacon" | "fetch" | "xhr"}.
 * No build step, no dependency.
 */
(function (global) {
  "use strict";

  var BEACON_LIMIT = 64 * 1024;
  var script = global.document && global.document.currentScript;
  var settings = { endpoint: defaultEndpoint(script) };

  function defaultEndpoint(element) {
    if (element && element.dataset && element.dataset.endpoint) {
      return element.dataset.endpoint;
    }
    var source = element && element.src;
    if (source && /\/eventlib\.js(\?.*)?$/.test(source)) {
      return source.replace(/eventlib\.js(\?.*)?$/, "log");
    }
    return "/event/log";
  }

  function configure(options) {
    if (options && options.endpoint) {
      settings.endpoint = options.endpoint;
    }
    return { endpoint: settings.endpoint };
  }

  function url(endpoint, name) {
    var separator = endpoint.indexOf("?") === -1 ? "?" : "&";
    return endpoint + separator + "__event__=" + encodeURIComponent(name);
  }

  function byteLength(text) {
    return global.Blob ? new global.Blob([text]).size : text.length * 3;
  }

  function refusal(status, text) {
    var message = "eventlib: the server answered " + status;
    try {
      var answer = JSON.parse(text);
      if (answer && answer.error) {
        message = "eventlib: " + answer.error;
      }
    } catch (ignored) {
      // not JSON: keep the status
    }
    var error = new Error(message);
    error.status = status;
    return error;
  }

  function sendBeacon(target, body) {
    var blob = new global.Blob([body], { type: "application/json" });
    if (!global.navigator.sendBeacon(target, blob)) {
      throw new Error("eventlib: the browser refused the beacon");
    }
    return Promise.resolve(null);
  }

  function sendFetch(target, body) {
    return global
      .fetch(target, {
        method: "POST",
        body: body,
        headers: { "Content-Type": "application/json" },
        credentials: "same-origin",
        keepalive: true,
      })
      .then(function (response) {
        return response.text().then(function (text) {
          if (!response.ok) {
            throw refusal(response.status, text);
          }
          try {
            return JSON.parse(text).id;
          } catch (ignored) {
            return null; // a success without our JSON (a proxy's 204, say)
          }
        });
      });
  }

  function sendXhr(target, body) {
    return new Promise(function (resolve, reject) {
      var request = new global.XMLHttpRequest();
      request.open("POST", target, true);
      request.setRequestHeader("Content-Type", "application/json");
      request.onload = function () {
        if (request.status >= 200 && request.status < 300) {
          try {
            resolve(JSON.parse(request.responseText).id);
          } catch (error) {
            resolve(null);
          }
        } else {
          reject(refusal(request.status, request.responseText));
        }
      };
      request.onerror = function () {
        reject(new Error("eventlib: the network failed"));
      };
      request.send(body);
    });
  }

  function transportsFor(body, options) {
    var chosen = options.transport;
    var small = byteLength(body) <= BEACON_LIMIT;
    var transports = [];
    if ((!chosen || chosen === "beacon") && small && global.navigator && global.navigator.sendBeacon && global.Blob) {
      transports.push(sendBeacon);
    }
    if ((!chosen || chosen === "fetch") && small && global.fetch) {
      transports.push(sendFetch);
    }
    if ((!chosen || chosen === "xhr") && global.XMLHttpRequest) {
      transports.push(sendXhr);
    }
    return transports;
  }

  function log(name, data, options) {
    var result;
    try {
      options = options || {};
      var body = JSON.stringify({ data: data || {} });
      var target = url(options.endpoint || settings.endpoint, String(name));
      var transports = transportsFor(body, options);
      result = attempt(transports, target, body, 0);
    } catch (error) {
      result = Promise.reject(error);
    }
    result.catch(function () {});
    return result;
  }

  function attempt(transports, target, body, index) {
    if (index >= transports.length) {
      return Promise.reject(new Error("eventlib: no transport could send the event"));
    }
    var sent;
    try {
      sent = transports[index](target, body);
    } catch (error) {
      return attempt(transports, target, body, index + 1);
    }
    return sent.catch(function (error) {
      if (error && error.status) {
        throw error; // the server answered: another transport would get the same answer
      }
      return attempt(transports, target, body, index + 1);
    });
  }

  var api = { log: log, configure: configure };
  global.eventlib = api;
  global.yipit = global.yipit || {};
  global.yipit.event = global.yipit.event || {};
  global.yipit.event.log = log;
})(typeof window !== "undefined" ? window : this);
