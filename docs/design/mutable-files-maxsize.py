MAX_CHUNK=512*1024; HDR=160; CHECK=80; ALIGN=64
def level_sizes(n):
    s=[max(n,1)]
    while s[-1]>1: s.append((s[-1]+1)//2)
    return s
def height(n): return len(level_sizes(n))-1
def seg_for(k,size,maxseg=128*1024):
    unit=ALIGN*k; full=max(maxseg//unit,1)*unit
    return min(full, ((max(size,1)+k-1)//k)*k)
def blen(k,l): return (((l+k-1)//k)+ALIGN-1)//ALIGN*ALIGN
def share_len(k,N,size):
    if size==0: return HDR
    ss=seg_for(k,size); ns=(size+ss-1)//ss
    last=size-(ns-1)*ss
    blocks=(ns-1)*blen(k,ss)+blen(k,last)
    front=200+32*height(N)
    tree=32*sum(level_sizes(ns)[:-1])
    return HDR+front+blocks+tree
def fits(k,N,size): return share_len(k,N,size)+CHECK<=MAX_CHUNK
for k,N in [(3,10),(1,1),(1,3),(2,5),(7,10),(10,10)]:
    lo,hi=0,k*MAX_CHUNK
    # monotone? check by scanning near boundary
    best=max(s for s in range(max(0,hi-200000),hi+1,1) if fits(k,N,s)) if False else None
    # binary search then verify monotonic locally
    while lo<hi:
        mid=(lo+hi+1)//2
        if fits(k,N,mid): lo=mid
        else: hi=mid-1
    nonmono=[s for s in range(lo+1, min(lo+20000, k*MAX_CHUNK)) if fits(k,N,s)]
    print(k,N,lo, share_len(k,N,lo), "nonmono after:", nonmono[:3])
bad=[s for s in range(0,1568833,7) if not fits(3,10,s)]
print("non-fitting below max (k=3):", bad[:5])
