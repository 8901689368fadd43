// The softphone page (SPEC W4): JsSIP registers the account given in the query string
// (?ws=wss://…&uri=sip:…&password=…) and shows the outcome; `window.outcome` is what the
// driver waits for. esbuild bundles this with JsSIP into bundle.js, as JsSIP's own build does.
import JsSIP from 'jssip';

const params = new URLSearchParams(window.location.search);
const show = (id, text) => { document.getElementById(id).textContent = text; };
show('uri', params.get('uri'));
show('ws', params.get('ws'));

const ua = new JsSIP.UA({
  sockets: [new JsSIP.WebSocketInterface(params.get('ws'))],
  uri: params.get('uri'),
  password: params.get('password'),
  register: true,
  register_expires: 600,
});

ua.on('registered', (e) => {
  const status = document.getElementById('status');
  status.textContent = 'Registered';
  status.className = 'ok';
  show('answer', `${e.response.status_code} ${e.response.reason_phrase}`);
  window.outcome = { registered: true, contact: ua.contact.toString() };
});

ua.on('registrationFailed', (e) => {
  const status = document.getElementById('status');
  status.textContent = `Registration failed: ${e.cause}`;
  status.className = 'failed';
  if (e.response) show('answer', `${e.response.status_code} ${e.response.reason_phrase}`);
  window.outcome = { registered: false, cause: e.cause };
});

ua.start();
