import { render } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { api, ApiError, forgetKey, storedKey, storeKey } from './api';
import { Subscriptions } from './subscriptions';
import { Events } from './events';
import { Charts } from './charts';
import { Audit } from './audit';
import './style.css';

type Tab = 'subscriptions' | 'events' | 'charts' | 'audit';
const TABS: [Tab, string][] = [
  ['subscriptions', 'Subscriptions'],
  ['events', 'Events'],
  ['charts', 'Delivery charts'],
  ['audit', 'Audit'],
];

function SignIn({ onSignedIn }: { onSignedIn: () => void }) {
  const [key, setKey] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  async function submit(e: Event) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      // Any tenant call proves the key; nothing is stored until it works.
      // A 403 proves it too: the key is valid but lacks webhooks:read (a
      // scoped key); the pages it cannot read say which scope they need.
      try {
        await api('GET', '/portal/webhooks?limit=1', undefined, key.trim());
      } catch (err) {
        if (!(err instanceof ApiError && err.status === 403)) throw err;
      }
      storeKey(key.trim());
      setKey('');
      onSignedIn();
    } catch (err) {
      setError(err instanceof ApiError && err.status === 401 ? 'That API key was refused: check it and try again.' : String((err as Error).message));
    } finally {
      setBusy(false);
    }
  }
  return (
    <main class="signin" id="main">
      <h1>Herald portal</h1>
      <p>Sign in with one of your tenant's API keys. It is kept in this tab's session storage only and sent to Herald's API as a bearer token.</p>
      <form onSubmit={submit} aria-describedby={error ? 'signin-error' : undefined}>
        <label for="api-key">API key</label>
        <input id="api-key" name="api-key" type="password" autocomplete="off" spellcheck={false} required value={key} onInput={(e) => setKey((e.target as HTMLInputElement).value)} />
        <button type="submit" disabled={busy}>{busy ? 'Signing in…' : 'Sign in'}</button>
      </form>
      {error && <p id="signin-error" class="error" role="alert">{error}</p>}
    </main>
  );
}

function App() {
  const [signedIn, setSignedIn] = useState(!!storedKey());
  const [tab, setTab] = useState<Tab>('subscriptions');
  const [openEvent, setOpenEvent] = useState<string | null>(null);
  const tabRefs = useRef<Record<string, HTMLButtonElement | null>>({});

  useEffect(() => {
    const onRejected = () => setSignedIn(false);
    window.addEventListener('herald:unauthorized', onRejected);
    return () => window.removeEventListener('herald:unauthorized', onRejected);
  }, []);

  if (!signedIn) return <SignIn onSignedIn={() => setSignedIn(true)} />;

  function onTabKey(e: KeyboardEvent, i: number) {
    const d = e.key === 'ArrowRight' ? 1 : e.key === 'ArrowLeft' ? -1 : 0;
    if (!d) return;
    e.preventDefault();
    const next = TABS[(i + d + TABS.length) % TABS.length][0];
    setTab(next);
    tabRefs.current[next]?.focus();
  }

  return (
    <>
      <a class="skip" href="#main">Skip to content</a>
      <header class="top">
        <span class="brand">Herald portal</span>
        <nav role="tablist" aria-label="Sections">
          {TABS.map(([id, label], i) => (
            <button
              key={id}
              ref={(el) => (tabRefs.current[id] = el)}
              role="tab"
              id={`tab-${id}`}
              aria-selected={tab === id}
              aria-controls="main"
              tabIndex={tab === id ? 0 : -1}
              onClick={() => setTab(id)}
              onKeyDown={(e) => onTabKey(e as KeyboardEvent, i)}
            >
              {label}
            </button>
          ))}
        </nav>
        <button
          class="link"
          onClick={() => {
            forgetKey();
            setSignedIn(false);
          }}
        >
          Sign out
        </button>
      </header>
      <main id="main" role="tabpanel" aria-labelledby={`tab-${tab}`} tabIndex={-1}>
        {tab === 'subscriptions' && (
          <Subscriptions
            onOpenEvent={(id) => {
              setOpenEvent(id);
              setTab('events');
            }}
          />
        )}
        {tab === 'events' && <Events openEvent={openEvent} setOpenEvent={setOpenEvent} />}
        {tab === 'charts' && <Charts />}
        {tab === 'audit' && <Audit />}
      </main>
    </>
  );
}

render(<App />, document.getElementById('app')!);
