// fastgen live: connect over WebRTC, speak a file or the microphone, interrupt. No build step.
"use strict";
const params = new URLSearchParams(location.search);
const token = params.get("token") || sessionStorage.getItem("fastgen-token") || "";
if (params.get("token")) {                       // taken once: keep it, drop it from the address bar
  sessionStorage.setItem("fastgen-token", token);
  history.replaceState(null, "", location.pathname);
}
const $ = (id) => document.getElementById(id);
let pc = null, session = null, micStream = null;

function api(path, options = {}) {
  options.headers = Object.assign({}, options.headers || {}, token ? { Authorization: "Bearer " + token } : {});
  return fetch(path, options).then(async (r) => {
    const body = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
    if (!r.ok) throw new Error((body && body.error) || body || r.statusText);
    return body;
  });
}
function say(text) { $("status").textContent = text; }
function fail(err) { $("error").textContent = String(err.message || err); }
function connected(on) {
  $("connect").disabled = on; $("disconnect").disabled = !on;
  $("file").disabled = !on; $("stop").disabled = !on; $("avatar").disabled = on; $("mic").disabled = on;
}

async function loadAvatars() {
  try {
    for (const a of await api("/avatars")) {
      const o = document.createElement("option");
      o.value = a.name; o.textContent = `${a.name} (${a.width}x${a.height})`;
      $("avatar").appendChild(o);
    }
  } catch (err) { fail(err); }
}

function iceDone(pc) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => { if (pc.iceGatheringState === "complete") resolve(); });
  });
}

async function connect() {
  $("error").textContent = "";
  say("connecting…");
  pc = new RTCPeerConnection();
  const remote = new MediaStream();
  pc.addEventListener("track", (e) => { remote.addTrack(e.track); $("video").srcObject = remote; });
  pc.addEventListener("connectionstatechange", () => {
    say(pc ? pc.connectionState : "not connected");
    if (pc && ["failed", "closed"].includes(pc.connectionState)) disconnect();
  });
  pc.addTransceiver("video", { direction: "recvonly" });
  if ($("mic").checked) {
    micStream = await navigator.mediaDevices.getUserMedia({ audio: true });
    pc.addTransceiver(micStream.getAudioTracks()[0], { direction: "sendrecv" });
  } else {
    pc.addTransceiver("audio", { direction: "recvonly" });
  }
  await pc.setLocalDescription(await pc.createOffer());
  await iceDone(pc);
  const answer = await api("/sessions", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type, avatar: $("avatar").value }),
  });
  session = answer.session;
  await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
  connected(true);
}

async function disconnect() {
  const sid = session;
  session = null;
  if (sid) api(`/sessions/${sid}`, { method: "DELETE" }).catch(() => {});
  if (micStream) micStream.getTracks().forEach((t) => t.stop());
  if (pc) { const p = pc; pc = null; p.close(); }
  micStream = null;
  connected(false);
  say("not connected");
}

async function speakFile(file) {
  $("error").textContent = "";
  const r = await api(`/sessions/${session}/speak`, { method: "POST", body: file,
    headers: { "Content-Type": file.type || "application/octet-stream" } });
  say(`speaking ${r.seconds.toFixed(1)} s`);
}

$("connect").onclick = () => connect().catch((err) => { fail(err); disconnect(); });
$("disconnect").onclick = () => disconnect();
$("file").onchange = (e) => { if (e.target.files[0]) speakFile(e.target.files[0]).catch(fail); e.target.value = ""; };
$("stop").onclick = () => api(`/sessions/${session}/interrupt`, { method: "POST" }).then(() => say("stopped")).catch(fail);
window.fastgen = { connect, disconnect, speakFile, session: () => session, peer: () => pc, api };   // for scripted tests
loadAvatars();
