//! A small harness: Tubs on real TCP (127.0.0.1) or on in-memory duplex streams, with the
//! same tests run over both.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use folio_rpc::connector::{AcceptFuture, ConnectFuture};
use folio_rpc::{ConnectError, Connector, Furl, Hint, Host, Identity, Listener, Tub, TubConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    Tcp,
    Mem,
}

/// In-memory network: `mem:NAME` hints reach the Tub registered under NAME.
#[derive(Default)]
pub struct MemNet {
    tubs: Mutex<HashMap<String, Tub>>,
}

/// The connector side of a [`MemNet`].
pub struct MemConnector(pub Arc<MemNet>);

impl Connector for MemConnector {
    fn connect<'a>(&'a self, hint: &'a Hint) -> ConnectFuture<'a> {
        Box::pin(async move {
            let text = hint.to_string();
            let Some(name) = text.strip_prefix("mem:") else {
                return Err(ConnectError::Unsupported {
                    kind: hint.kind().to_string(),
                });
            };
            let tub = self.0.tubs.lock().unwrap().get(name).cloned();
            let Some(tub) = tub else {
                return Err(ConnectError::Failed {
                    hint: text.clone(),
                    source: format!("nothing listens at {text}").into(),
                });
            };
            let (a, b) = tokio::io::duplex(256 * 1024);
            tokio::spawn(async move {
                let _ = tub.accept(b).await;
            });
            Ok(Box::new(a) as folio_rpc::BoxStream)
        })
    }
}

/// Direct TCP for `tcp:` hints (folio-handlers does this for real nodes).
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect<'a>(&'a self, hint: &'a Hint) -> ConnectFuture<'a> {
        Box::pin(async move {
            let Hint::Tcp { host, port } = hint else {
                return Err(ConnectError::Unsupported {
                    kind: hint.kind().to_string(),
                });
            };
            let s = tokio::net::TcpStream::connect((host.to_dial_string(), *port))
                .await
                .map_err(|e| ConnectError::Failed {
                    hint: hint.to_string(),
                    source: Box::new(e),
                })?;
            s.set_nodelay(true).unwrap();
            Ok(Box::new(s) as folio_rpc::BoxStream)
        })
    }
}

pub struct TcpL(pub tokio::net::TcpListener);

impl Listener for TcpL {
    fn accept(&mut self) -> AcceptFuture<'_> {
        Box::pin(async move {
            let (s, _) = self.0.accept().await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as folio_rpc::BoxStream)
        })
    }

    fn describe(&self) -> String {
        format!("tcp:{}", self.0.local_addr().map(|a| a.port()).unwrap_or(0))
    }
}

pub struct Grid {
    pub net: Net,
    pub mem: Arc<MemNet>,
    next: Mutex<u32>,
}

impl Grid {
    pub fn new(net: Net) -> Self {
        Grid {
            net,
            mem: Arc::new(MemNet::default()),
            next: Mutex::new(0),
        }
    }

    pub fn config() -> TubConfig {
        TubConfig::default().dial_timeout(Duration::from_secs(10))
    }

    /// A listening Tub with a fresh identity.
    pub async fn tub(&self) -> Tub {
        self.tub_with(Identity::generate().unwrap(), Self::config())
            .await
    }

    pub async fn tub_with(&self, id: Identity, config: TubConfig) -> Tub {
        let name = {
            let mut n = self.next.lock().unwrap();
            *n += 1;
            format!("t{}", *n)
        };
        self.tub_at(id, config, &name, 0).await
    }

    /// A Tub listening at `name` (memory) or `port` (TCP; 0 for any).
    pub async fn tub_at(&self, id: Identity, config: TubConfig, name: &str, port: u16) -> Tub {
        match self.net {
            Net::Mem => {
                let tub = Tub::new(id, Arc::new(MemConnector(self.mem.clone())), config).unwrap();
                tub.set_location(vec![format!("mem:{name}").parse().unwrap()]);
                self.mem
                    .tubs
                    .lock()
                    .unwrap()
                    .insert(name.to_string(), tub.clone());
                tub
            }
            Net::Tcp => {
                let tub = Tub::new(id, Arc::new(TcpConnector), config).unwrap();
                let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .unwrap();
                let port = l.local_addr().unwrap().port();
                tub.set_location(vec![Hint::Tcp {
                    host: Host::Ipv4(std::net::Ipv4Addr::LOCALHOST),
                    port,
                }]);
                tub.listen(TcpL(l));
                tub
            }
        }
    }

    /// Gives `tub` one more place to be reached (a second listener), added to its location.
    pub async fn add_hint(&self, tub: &Tub) {
        let mut location = tub.location();
        match self.net {
            Net::Mem => {
                let name = {
                    let mut n = self.next.lock().unwrap();
                    *n += 1;
                    format!("alias{}", *n)
                };
                self.mem
                    .tubs
                    .lock()
                    .unwrap()
                    .insert(name.clone(), tub.clone());
                location.push(format!("mem:{name}").parse().unwrap());
            }
            Net::Tcp => {
                let l = tokio::net::TcpListener::bind(("127.0.0.1", 0))
                    .await
                    .unwrap();
                location.push(Hint::Tcp {
                    host: Host::Ipv4(std::net::Ipv4Addr::LOCALHOST),
                    port: l.local_addr().unwrap().port(),
                });
                tub.listen(TcpL(l));
            }
        }
        tub.set_location(location);
    }

    /// Takes a memory Tub off the network (its listener goes away).
    pub fn unplug(&self, furl: &Furl) {
        if let Some(Hint::Unknown(h)) = furl.hints().first() {
            self.mem
                .tubs
                .lock()
                .unwrap()
                .remove(h.trim_start_matches("mem:"));
        }
    }
}

/// Polls `cond` until it holds, failing after `secs` seconds.
pub async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
