//! A Folio service and its client, for two terminals.
//!
//! ```text
//! terminal 1:  cargo run -p folio-rpc --example greeter -- serve
//!              (prints a FURL; keeps its identity in greeter.pem, so the FURL survives restarts)
//! terminal 2:  cargo run -p folio-rpc --example greeter -- call 'folio://...' Alice
//! ```
//!
//! The service has two methods; `guestbook` returns a *reference* to another object, which
//! the client then calls over the same connection.

use std::path::Path;
use std::sync::{Arc, Mutex};

use folio_handlers::{Registry, TcpListener};
use folio_rpc::{interface, CallError, Furl, Host, Identity, Tub, TubConfig};
use serde::{Deserialize, Serialize};

/// What can go wrong in the greeter, as the caller sees it. Like any error type, it is
/// `Display` (here through `thiserror`), and so `CallError<GreetError>` is a
/// `std::error::Error` that `?` can pass on.
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
pub enum GreetError {
    /// Names cannot be empty.
    #[error("a name cannot be empty")]
    EmptyName,
}

/// Greets people and hands out its guestbook.
#[interface(name = "example.greeter.v1")]
pub trait Greeter {
    /// Says hello.
    async fn greet(&self, name: String) -> Result<String, GreetError>;
    /// Returns a reference to the guestbook.
    async fn guestbook(&self) -> Result<GuestbookRef, GreetError>;
}

/// A list of names, reached through a reference.
#[interface(name = "example.guestbook.v1")]
pub trait Guestbook {
    /// Adds a name; returns how many have signed.
    async fn sign(&self, name: String) -> Result<u64, GreetError>;
    /// Everyone who signed.
    async fn names(&self) -> Result<Vec<String>, GreetError>;
}

struct Greetings {
    book: GuestbookRef,
}

impl Greeter for Greetings {
    async fn greet(&self, name: String) -> Result<String, GreetError> {
        if name.is_empty() {
            return Err(GreetError::EmptyName);
        }
        Ok(format!("Hello, {name}!"))
    }

    async fn guestbook(&self) -> Result<GuestbookRef, GreetError> {
        Ok(self.book.clone())
    }
}

struct Book(Mutex<Vec<String>>);

impl Guestbook for Book {
    async fn sign(&self, name: String) -> Result<u64, GreetError> {
        let mut names = self.0.lock().unwrap();
        names.push(name);
        Ok(names.len() as u64)
    }

    async fn names(&self) -> Result<Vec<String>, GreetError> {
        Ok(self.0.lock().unwrap().clone())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve"] => serve(4455).await,
        ["serve", port] => serve(port.parse()?).await,
        ["call", furl, name] => call(furl.parse()?, name).await,
        _ => {
            eprintln!("usage: greeter serve [PORT] | greeter call FURL NAME");
            std::process::exit(2);
        }
    }
}

async fn serve(port: u16) -> Result<(), Box<dyn std::error::Error>> {
    let identity = Identity::load_or_generate(Path::new("greeter.pem"))?;
    let tub = Tub::new(
        identity,
        Arc::new(Registry::with_tcp()),
        TubConfig::default(),
    )?;
    let listener = TcpListener::bind(&format!("tcp:{port}:interface=127.0.0.1").parse()?).await?;
    tub.set_location(vec![listener.hint_for(Host::Ipv4([127, 0, 0, 1].into()))]);
    tub.listen(listener);

    let book = GuestbookRef::serve(Book(Mutex::new(Vec::new())));
    let furl = tub.register_as(GreeterRef::serve(Greetings { book }), "greeter")?;
    println!("{furl}");
    tokio::signal::ctrl_c().await?;
    tub.shutdown().await;
    Ok(())
}

async fn call(furl: Furl, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let tub = Tub::new(
        Identity::generate()?,
        Arc::new(Registry::with_tcp()),
        TubConfig::default(),
    )?;
    let greeter: GreeterRef = tub.get(&furl).await?;
    println!("{}", greeter.greet(name.to_string()).await?);
    match greeter.greet(String::new()).await {
        Err(CallError::App(GreetError::EmptyName)) => {
            println!("(an empty name is refused, as declared)")
        }
        other => println!("unexpected: {other:?}"),
    }
    let book = greeter.guestbook().await?;
    let count = book.sign(name.to_string()).await?;
    println!(
        "signed the guestbook as visitor #{count}: {:?}",
        book.names().await?
    );
    Ok(())
}
