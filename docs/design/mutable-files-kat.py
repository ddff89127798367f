import hashlib, struct, base64
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
def H(tag, *parts):
    h = hashlib.sha256(); t = tag.encode()
    h.update(struct.pack(">Q", len(t))); h.update(t)
    for p in parts: h.update(struct.pack(">Q", len(p))); h.update(p)
    return h.digest()
b32 = lambda b: base64.b32encode(b).decode().lower().rstrip("=")
W = bytes(range(32))
S = H("folio:mut:signing-seed:v1", W)
sk = Ed25519PrivateKey.from_private_bytes(S)
VK = sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
R = H("folio:mut:read-key:v1", W)
SI = H("folio:mut:storage-index:v1", R)[:16]
WEM = H("folio:mut:write-enabler-master:v1", W)
srv = bytes([0x42])*32
WE = H("folio:mut:write-enabler:v1", WEM, srv)
salt = bytes([7])*16
K = H("folio:mut:data-key:v1", R, salt)
DK = H("folio:dir:writecap-key:v1", W)
esalt = bytes([9])*16
EK = H("folio:dir:entry-key:v1", DK, esalt)
# signed prefix: k=3 N=10 seq=1 salt data_len=0 ueb=zeros
prefix = b"folioMUT" + struct.pack(">HHHH", 1, 3, 10, 0) + struct.pack(">Q", 1) + salt + struct.pack(">Q", 0) + bytes(32)
assert len(prefix) == 80
m = H("folio:mut:signature:v1", SI, prefix)
sig = sk.sign(m)
pt = b"hello, mutable world"
ct = Cipher(algorithms.AES(K), modes.CTR(bytes(16))).encryptor().update(pt)
wc = "folio:MUT:" + b32(W)
ect = Cipher(algorithms.AES(EK), modes.CTR(bytes(16))).encryptor().update(wc.encode())
for n, v in [("S (signing seed)", S), ("VK", VK), ("R", R), ("SI", SI), ("WEM", WEM), ("WE(server 0x42*32)", WE), ("K(salt 0x07*16)", K), ("DK", DK), ("EK(entry salt 0x09*16)", EK), ("sig message m", m), ("signature", sig), ("AES-CTR(K, 'hello, mutable world')", ct), ("sealed 'folio:MUT:<W>' under EK", ect)]:
    print(f"| {n} | `{v.hex()}` |")
print("write cap:", wc)
print("read cap: folio:MUT-RO:" + b32(R) + ":" + b32(VK))
print("verify cap: folio:MUT-V:" + b32(SI) + ":" + b32(VK))
print("prefix hex", prefix.hex())
